"""`jetqueue import openfaas` (generator/openfaas.py, generator/importer.py) on the OpenFaaS charts' own values
files (tests/data/openfaas/, copied from faas-netes at 662ce9ce): valid queues files, every value accounted for."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from jetqueue.generator import openfaas
from jetqueue.generator.importer import cmd_import_openfaas, convert
from jetqueue.generator.openfaas import ImportError_
from jetqueue.generator.render import render

DATA = Path(__file__).resolve().parents[1] / "data" / "openfaas"
CHARTS = Path(__file__).resolve().parents[2] / "charts"
VALUES, PRO, QUEUE_WORKER = "openfaas-values.yaml", "openfaas-values-pro.yaml", "queue-worker-values.yaml"
# The dedicated queue of chart/queue-worker's README ("values-slow-fns.yaml"), over that chart's values.
SLOW_FNS = {
    "maxInflight": 5,
    "mode": "static",
    "nats": {"stream": {"name": "slow-fns"}, "consumer": {"durableName": "slow-fns-workers"}},
    "upstreamTimeout": "15m",
}


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DATA / name).read_text())
    return doc


def releases(*args: str, extra: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    files = {name: load(name) for name in (VALUES, PRO, QUEUE_WORKER)} | (extra or {})
    return [(arg, [files[n] for n in arg.split(",")]) for arg in args]


CASES = {
    "openfaas CE": [VALUES],
    "openfaas Pro": [f"{VALUES},{PRO}"],
    "queue-worker": [QUEUE_WORKER],
    "Pro with two dedicated queues": [f"{VALUES},{PRO}", QUEUE_WORKER, f"{QUEUE_WORKER},slow-fns.yaml"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_charts_own_values_become_valid_queues_files_that_render_into_valid_chart_values(case):
    imported = convert(releases(*CASES[case], extra={"slow-fns.yaml": SLOW_FNS}))
    assert not imported.result.errors, [p.format("q") for p in imported.result.problems]
    assert imported.result.config is not None
    for line in imported.lines:
        assert f"#   {line}" in imported.text  # every line travels with the file
    for rel, text in render(imported.result.config).items():
        if rel.startswith(("queues/", "gateway/")):
            chart = CHARTS / ("gateway" if rel.startswith("gateway/") else "queue-worker")
            helm_python.Chart.load(chart).validate_schema(yaml.safe_load(text))


def test_pro_values_carry_over_as_openfaas_runs_them():
    imported = convert(
        releases(f"{VALUES},{PRO}", QUEUE_WORKER, f"{QUEUE_WORKER},slow-fns.yaml", extra={"slow-fns.yaml": SLOW_FNS})
    )
    doc = yaml.safe_load(imported.text)
    shared = doc["queues"]["faas-request"]
    assert shared["replicas"] == 3 and shared["maxInflight"] == 50  # values-pro.yaml over values.yaml
    assert shared["retry"] == {
        "maxAttempts": 100,
        "initialWait": "10s",
        "maxWait": "2m",
        "httpCodes": [408, 429, 500, 502, 503, 504],
    }
    assert shared["ackWait"] == "1m" and shared["upstreamTimeout"] == "1m" and shared["mode"] == "static"
    assert shared["topologySpreadConstraints"] == {
        "kubernetes.io/hostname": {"maxSkew": 1, "whenUnsatisfiable": "ScheduleAnyway"}
    }
    assert doc["gateway"]["defaultQueue"] == "faas-request"
    assert doc["openfaas"] == {"url": "http://gateway.openfaas:8080", "auth": {"secretName": "basic-auth"}}
    slow = doc["queues"]["slow-fns"]
    assert slow["maxInflight"] == 5 and slow["upstreamTimeout"] == "15m" and slow["shutdownTimeout"] == "15m"
    assert doc["queues"]["custom-request"]["maxInflight"] == 1 and doc["queues"]["custom-request"]["ackWait"] == "30s"
    assert "nats" not in doc  # OpenFaaS's own NATS is not shared: jetqueue's production NATS
    config = imported.result.config
    assert config is not None and config["nats"]["profile"] == "production"


def test_every_value_that_does_not_carry_over_has_a_line_saying_why():
    imported = convert(releases(f"{VALUES},{PRO}", QUEUE_WORKER))
    text = "\n".join(imported.lines)
    for expected in (
        "queueWorker.queueGroup=faas: not carried: a NATS Streaming queue group",
        "jetstreamQueueWorker.durableName=faas-workers: not carried",
        "jetstreamQueueWorker.image=ghcr.io/openfaasltd/jetstream-queue-worker:0.5.7: not carried",
        "jetstreamQueueWorker.topologySpreadConstraints[0].labelSelector=",
        "queueWorker.resources.requests.memory=120Mi: not carried: jetqueue's memory request is also its limit;",
        f"{QUEUE_WORKER}: nats.consumer.durableName=custom-workers: not carried: jetqueue's consumer is "
        "custom-request-workers",
        "copy the Secret basic-auth from namespace openfaas",
    ):
        assert expected in text, expected
    assert not any("unknown to this importer" in line for line in imported.lines)  # the real files: all known


def test_community_edition_values_keep_its_behaviour():
    imported = convert(releases(VALUES))
    doc = yaml.safe_load(imported.text)
    assert doc["queues"]["faas-request"]["retry"] == {"maxAttempts": 1}  # CE never retries
    assert doc["queues"]["faas-request"]["maxInflight"] == 1
    assert any(
        "openfaasPro=false: note: the Community Edition's queue-worker never retries" in line for line in imported.lines
    )


def test_a_value_the_importer_does_not_know_is_reported_not_dropped_silently():
    odd = {"jetstreamQueueWorker": {"shinyNewKnob": 7}, "openfaasPro": True}
    imported = convert(releases(f"{VALUES},odd.yaml", extra={"odd.yaml": odd}))
    assert f"{VALUES},odd.yaml: jetstreamQueueWorker.shinyNewKnob=7: not carried: unknown to this importer" in (
        imported.lines
    )
    qw = convert(releases(f"{QUEUE_WORKER},odd.yaml", extra={"odd.yaml": {"fancy": {"x": 1}}}))
    assert any("fancy.x=1: not carried: unknown to this importer" in line for line in qw.lines)


def test_values_with_no_jetqueue_equivalent_or_a_jetqueue_name():
    custom = {
        "queueName": "batch_jobs",
        "insecureTLS": True,
        "initialRetryWait": "0s",
        "queuePartitions": 4,
        "nodeSelector": {"pool": "queues"},
        "nats": {"host": "nats.nats", "port": "4222"},
        "consumer": {"pullMaxMessages": 100},
    }
    imported = convert(releases(f"{QUEUE_WORKER},custom.yaml", extra={"custom.yaml": custom}))
    assert not imported.result.errors, [p.format("q") for p in imported.result.problems]
    doc = yaml.safe_load(imported.text)
    assert list(doc["queues"]) == ["batch-jobs"] and doc["queues"]["batch-jobs"]["retry"]["initialWait"] == "100ms"
    assert doc["queues"]["batch-jobs"]["partitions"] == 4
    assert doc["nats"] == {"profile": "external", "url": "nats://nats.nats:4222"}  # not OpenFaaS's own NATS
    assert doc["gateway"]["strictRouting"] is True  # no shared queue given: nothing falls into a wrong one
    text = "\n".join(imported.lines)
    for expected in (
        "queue 'batch_jobs': changed: to 'batch-jobs'",
        "insecureTLS=True: not carried: OpenFaaS then skips verifying the certificates of callbacks",
        "initialRetryWait=0s: changed: to 100ms",
        "queuePartitions=4: changed: to the queue's partitions: 4",
        "nodeSelector={'pool': 'queues'}: not carried",
        "consumer.pullMaxMessages=100: not carried",
        "nats: jetqueue connects to the NATS OpenFaaS uses",
    ):
        assert expected in text, expected


def test_input_that_cannot_be_converted_says_why():
    with pytest.raises(ImportError_, match="neither the openfaas chart's values nor the queue-worker chart's"):
        convert([("x.yaml", [{"prometheus": {"create": True}}])])
    with pytest.raises(ImportError_, match="a second openfaas release"):
        convert(releases(VALUES, PRO))
    with pytest.raises(ImportError_, match="queue 'custom-request' again"):
        convert(releases(QUEUE_WORKER, QUEUE_WORKER))
    with pytest.raises(ImportError_, match="layers values of both charts"):
        convert(releases(f"{VALUES},{QUEUE_WORKER}"))
    assert openfaas.kind_of(load(PRO)) == "openfaas" and openfaas.kind_of(load(QUEUE_WORKER)) == "queue-worker"


def test_the_command_writes_the_file_reports_on_stderr_and_exits_as_documented(tmp_path, capsys):
    out = tmp_path / "queues.yaml"
    args = argparse.Namespace(
        values=[f"{DATA / VALUES},{DATA / PRO}", str(DATA / QUEUE_WORKER)], out=str(out), namespace="openfaas"
    )
    assert cmd_import_openfaas(args) == 0
    err = capsys.readouterr().err
    assert "queueWorker.queueGroup=faas: not carried" in err and "wrote" in err
    assert yaml.safe_load(out.read_text())["queues"].keys() == {"faas-request", "custom-request"}
    args.values = [str(tmp_path / "missing.yaml")]
    assert cmd_import_openfaas(args) == 2
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    args.values = [str(tmp_path / "list.yaml")]
    assert cmd_import_openfaas(args) == 2
    assert "not a values file" in capsys.readouterr().err
    args.values, args.out = [str(DATA / QUEUE_WORKER)], "-"
    assert cmd_import_openfaas(args) == 0
    assert capsys.readouterr().out.startswith("# Generated by `jetqueue import openfaas`")


def test_the_migration_page_shows_what_the_command_prints_on_the_charts_own_files():
    page = (Path(__file__).resolve().parents[2] / "docs" / "migrating-from-openfaas.md").read_text()
    command = f"$ jetqueue import openfaas {VALUES},{PRO} {QUEUE_WORKER} -o queues.yaml\n"
    shown = page[page.index(command) + len(command) :].split("```", 1)[0].splitlines()
    assert shown == convert(releases(f"{VALUES},{PRO}", QUEUE_WORKER)).lines


def test_a_value_cannot_break_out_of_the_header_comment_nor_crash_the_import():
    sneaky = {"jetstreamQueueWorker": {"image": "x\nqueues: {evil: {}}"}, "openfaasPro": True}
    imported = convert(releases(f"{VALUES},sneaky.yaml", extra={"sneaky.yaml": sneaky}))
    assert list(yaml.safe_load(imported.text)["queues"]) == ["faas-request"]
    assert "image=x\\nqueues: {evil: {}}: not carried" in imported.text
    for bad, message in (
        ({"queueWorkerPro": {"maxRetryAttempts": "ten"}}, "queueWorkerPro.maxRetryAttempts=ten: not a whole number"),
        ({"gateway": {"upstreamTimeout": "a while"}}, "gateway.upstreamTimeout=a while: 'a while' is not a duration"),
        ({"queueWorkerPro": {"httpRetryCodes": "429;503"}}, "not comma-separated status codes"),
    ):
        with pytest.raises(ImportError_, match=re.escape(message)):
            convert(releases(f"{VALUES},bad.yaml", extra={"bad.yaml": {"openfaasPro": True, **bad}}))
    quoted = {"openfaasPro": "true", "jetstreamQueueWorker": {"adaptiveConcurrency": "false"}}
    doc = yaml.safe_load(convert(releases(f"{VALUES},quoted.yaml", extra={"quoted.yaml": quoted})).text)
    assert doc["queues"]["faas-request"]["adaptiveConcurrency"] is False  # "false" in the worker's env is false
    assert doc["queues"]["faas-request"]["retry"]["maxAttempts"] == 100  # openfaasPro "true": the Pro worker
