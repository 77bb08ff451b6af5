"""jetqueue as a drop-in for the OpenFaaS queue-worker, end to end: the real gateway and worker on a real
nats-server, functions behind a server that answers as the OpenFaaS gateway does (tests/openfaas_gateway.py).

The names table of docs/migrating-from-openfaas.md is read here and every row checked against what the running
gateway and worker expose (/metrics, the 202, the function's request, the callback): the page and the code
cannot drift apart."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from jetqueue import __version__, openfaas
from tests.helpers import connect, dead_letters, gateway_settings, running_gateway, running_worker, worker_settings
from tests.openfaas_gateway import OpenFaaSGateway, scaling_from_zero
from tests.servers import eventually

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "migrating-from-openfaas.md"
ROW = re.compile(r"^\| (?P<what>[a-z ]+) \| (?P<openfaas>.+?) \| (?P<jetqueue>.+?) \| (?P<notes>.*?) ?\|$")
NAME = re.compile(r"^`(?P<name>[^`{]+)(\{(?P<labels>[^}]*)\})?`( (?P<type>gauge|counter|histogram))?$")


@dataclass
class Name:
    name: str
    labels: dict[str, str | None]  # label → its fixed value, if the table gives one
    type: str


def parse(cell: str) -> Name | None:
    if cell == "—":
        return None
    m = NAME.match(cell)
    assert m, f"cannot read {cell!r} in {PAGE.name}"
    labels: dict[str, str | None] = {}
    for part in filter(None, (m["labels"] or "").split(",")):
        key, _, value = part.partition("=")
        labels[key] = value.strip('"') if value else None
    return Name(m["name"], labels, m["type"] or "")


def table() -> list[tuple[str, Name | None, Name | None]]:
    rows = []
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        m = ROW.match(line)
        if m and m["what"] != "what":
            rows.append((m["what"], parse(m["openfaas"]), parse(m["jetqueue"])))
    assert len(rows) > 40, "the names table was not found"
    return rows


@dataclass
class Scenario:
    accepted: dict[str, str]  # the 202's headers
    requests: list[dict[str, str]]  # the headers of each request the function got
    callback: dict[str, str]
    body: bytes
    metrics: dict[str, str]  # process → its /metrics


@pytest.fixture
async def openfaas_gateway():
    gw = await OpenFaaSGateway().start()
    yield gw
    await gw.stop()


def openfaas_settings(gw: OpenFaaSGateway) -> dict[str, Any]:
    return {"openfaas_url": gw.url, "openfaas_user": gw.user, "openfaas_password": gw.password}


async def scaling_call(nats_url: str, gw: OpenFaaSGateway, callbacks: Any, **worker: Any) -> Scenario:
    """One call of a function scaling from zero: the OpenFaaS gateway's 404 + X-OpenFaaS-Internal twice, then 200."""
    gw.deploy("scaling")
    gw.handlers["scaling"] = scaling_from_zero(2)
    ws = worker_settings(nats_url, gw.function_url, initial_retry_wait=0.2, **openfaas_settings(gw), **worker)
    gs = gateway_settings(nats_url, **openfaas_settings(gw))
    async with running_worker(ws) as w, running_gateway(gs) as g, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{gs.http_port}"
        async with http.post(
            f"{base}/async-function/scaling", data=b"hello", headers={"X-Callback-Url": callbacks.url}
        ) as r:
            assert r.status == 202, await r.text()
            accepted = dict(r.headers)
        await eventually(lambda: len(callbacks.received) == 1)
        metrics = {}
        for process, port in (("worker", ws.http_port), ("gateway", gs.http_port)):
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                metrics[process] = await r.text()
        assert w.catalog is not None and g.catalog is not None  # both read the OpenFaaS gateway's API
    headers, body = callbacks.received[0]
    return Scenario(accepted, gw.invocations["scaling"], headers, body, metrics)


async def test_a_function_scaling_from_zero_succeeds_on_the_third_attempt_with_openfaas_headers(
    nats_server, openfaas_gateway, callbacks
):
    s = await scaling_call(nats_server.url, openfaas_gateway, callbacks)
    assert len(s.requests) == 3  # 404 + X-OpenFaaS-Internal, again, then 200: 404 is not in retry.httpCodes
    call_id = s.accepted["X-Call-Id"]
    assert {r["X-Call-Id"] for r in s.requests} == {call_id}
    assert s.callback["X-Call-Id"] == call_id and s.callback["X-Function-Name"] == "scaling"
    assert s.callback["X-Function-Status"] == "200" and s.body == b"ran after 2 cold answers"
    assert s.callback["X-Retry"] == "2" and s.callback["X-Retry-Max"] == "9"  # retries made / allowed (10 attempts)
    assert s.callback["User-Agent"] == f"queue-worker/{__version__}"
    assert s.callback["X-Start-Time"] == s.accepted["X-Start-Time"] and float(s.callback["X-Duration-Seconds"]) >= 0
    assert 'http_requests_total{method="POST",path="/async-function",status="202"} 1.0' in s.metrics["gateway"]


async def test_without_the_openfaas_internal_rule_the_gateways_404_is_final(nats_server, openfaas_gateway, callbacks):
    """The control: the same call with queue.retry.openfaasInternal off is dead-lettered at the first 404."""
    s = await scaling_call(nats_server.url, openfaas_gateway, callbacks, retry_openfaas_internal=False)
    assert len(s.requests) == 1
    assert s.callback["X-Function-Status"] == "404" and s.callback["X-Retry"] == "0"
    nc = await connect(nats_server.url)
    (dl,) = await dead_letters(nc)
    assert dl.headers["Jq-Dlq-Reason"] == "rejected"
    await nc.close()


def families(text: str) -> dict[str, tuple[str, list[dict[str, str]]]]:
    """Exposed name → (type, each sample's labels), as Prometheus reads it (a counter's name ends in _total)."""
    out: dict[str, tuple[str, list[dict[str, str]]]] = {}
    for f in text_string_to_metric_families(text):
        if f.name.endswith("_created"):
            continue
        name = f.name + "_total" if f.type == "counter" else f.name
        samples = [s.labels for s in f.samples if not s.name.endswith("_created")]
        if f.type == "histogram":
            samples = [{k: v for k, v in labels.items() if k != "le"} for labels in samples]
        out[name] = (f.type, samples)
    return out


# Series the scenario is sure to have produced: their labels are checked on real samples.
SAMPLED = {
    "queue_worker_messages_processed_total",
    "queue_worker_messages_submitted_total",
    "queue_worker_retries_total",
    "queue_worker_invocation_duration_seconds",
    "queue_worker_callbacks_total",
    "queue_worker_nats_reconnect_total",
    "http_requests_total",
    "gateway_async_requests_total",
    "gateway_nats_reconnect_total",
    "gateway_publish_seconds",
}


async def test_the_names_table_matches_the_running_gateway_and_worker(nats_server, openfaas_gateway, callbacks):
    s = await scaling_call(nats_server.url, openfaas_gateway, callbacks)
    exposed = {process: families(text) for process, text in s.metrics.items()}
    listed: dict[str, set[str]] = {"worker": set(), "gateway": set()}
    chart = yaml.safe_load((ROOT / "charts" / "queue-worker" / "values.yaml").read_text())
    annotations = {openfaas.QUEUE, openfaas.RETRY_ATTEMPTS, openfaas.RETRY_CODES, openfaas.RETRY_MIN_WAIT}
    annotations.add(openfaas.RETRY_MAX_WAIT)
    headers = {"submission answer": s.accepted, "callback": s.callback}
    for what, theirs, ours in table():
        if ours is None:
            continue
        if what in ("worker metric", "gateway metric"):
            process = what.split()[0]
            listed[process].add(ours.name)
            assert ours.name in exposed[process], f"{ours.name}: in the table, not in the {process}'s /metrics"
            kind, samples = exposed[process][ours.name]
            assert kind == ours.type, (ours.name, kind)
            if ours.name in SAMPLED:
                assert samples, f"{ours.name}: no sample"
            for labels in samples:
                assert set(labels) == set(ours.labels), (ours.name, labels)
            for label, value in ours.labels.items():
                if value is not None:
                    assert any(labels.get(label) == value for labels in samples), (ours.name, label, value)
            if theirs is not None and theirs.name == ours.name:  # OpenFaaS's labels are all there too
                assert set(theirs.labels) <= set(ours.labels), ours.name
        elif what in headers:
            header, _, value = ours.name.partition(": ")
            assert header in headers[what], f"{what}: no {header}"
            if value:
                assert headers[what][header] == value.replace("<version>", __version__)
        elif what == "function request":
            assert all(ours.name in r for r in s.requests), ours.name
        elif what == "function answer":
            assert ours.name == openfaas.INTERNAL_HEADER
        elif what == "annotation":
            assert ours.name in annotations, ours.name
        elif what == "function env":
            assert ours.name == openfaas.EXEC_TIMEOUT
        elif what == "chart value":
            node: Any = chart
            for part in ours.name.split("."):
                assert isinstance(node, dict) and part in node, f"charts/queue-worker has no value {ours.name}"
                node = node[part]
        else:
            raise AssertionError(f"unknown row kind {what!r}")
    for process, found in exposed.items():  # and every name the processes expose has its row
        assert set(found) == listed[process], (process, set(found) ^ listed[process])


async def test_annotations_tune_the_worker_and_route_in_the_gateway(nats_server, openfaas_gateway, callbacks, tmp_path):
    """com.openfaas.retry.* replace the queue's retry policy for the function; com.openfaas.queue routes it."""
    gw = openfaas_gateway

    async def teapot(request: web.Request) -> web.Response:
        return web.Response(status=418, text="short and stout")

    gw.deploy("tuned", annotations={"com.openfaas.retry.attempts": "2", "com.openfaas.retry.codes": "418"})
    gw.handlers["tuned"] = teapot
    gw.deploy("routed", annotations={"com.openfaas.queue": "slow"})
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {}, "queues": {"faas-request": {}, "slow": {}}}))
    ws = worker_settings(nats_server.url, gw.function_url, initial_retry_wait=0.1, **openfaas_settings(gw))
    gs = gateway_settings(nats_server.url, routes_file=str(routes), **openfaas_settings(gw))
    async with running_worker(ws) as w, running_gateway(gs) as g, aiohttp.ClientSession() as http:
        worker_catalog, gateway_catalog = w.catalog, g.catalog
        assert worker_catalog is not None and gateway_catalog is not None
        await eventually(lambda: worker_catalog.refreshed_at > 0 and gateway_catalog.refreshed_at > 0)
        base = f"http://127.0.0.1:{gs.http_port}/async-function"
        async with http.post(f"{base}/tuned", headers={"X-Callback-Url": callbacks.url}) as r:
            assert r.status == 202 and r.headers["X-Queue"] == "faas-request"
        await eventually(lambda: len(callbacks.received) == 1)
        async with http.post(f"{base}/routed") as r:
            assert r.headers["X-Queue"] == "slow"  # by its annotation
        gw.deploy("late", annotations={"com.openfaas.queue": "slow"})  # deployed after the last refresh
        async with http.post(f"{base}/late") as r:
            assert r.headers["X-Queue"] == "faas-request"  # not known yet: as queues.yaml says, and looked up
        await eventually(lambda: gateway_catalog.knows("late"))
        async with http.post(f"{base}/late") as r:
            assert r.headers["X-Queue"] == "slow"
    headers, _ = callbacks.received[0]
    assert len(gw.invocations["tuned"]) == 2  # 418 retried (its codes), twice in all (its attempts)
    assert headers["X-Function-Status"] == "418" and headers["X-Retry"] == headers["X-Retry-Max"] == "1"
