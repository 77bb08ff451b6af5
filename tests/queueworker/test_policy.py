"""policy.py: a function's policy from queues.yaml's overrides, its OpenFaaS annotations, or the queue's settings."""

from __future__ import annotations

import json
import logging

import pytest

from jetqueue.openfaas import Function
from jetqueue.queueworker.policy import EXEC_TIMEOUT_GRACE, Policies, from_annotations
from jetqueue.settings import WorkerSettings


def policies(tmp_path=None, overrides=None, **settings) -> Policies:
    s = WorkerSettings(upstream_timeout=60.0, max_retry_attempts=10, initial_retry_wait=10.0, **settings)
    if overrides is not None:
        path = tmp_path / "functions.json"
        path.write_text(json.dumps(overrides))
        s.functions_file = str(path)
    return Policies.from_settings(s)


def test_annotations_replace_the_queues_values_one_by_one():
    p = policies()
    policy, problems = from_annotations(
        p.default,
        Function(
            {
                "com.openfaas.retry.attempts": "30",
                "com.openfaas.retry.codes": "429, 503",
                "com.openfaas.retry.min_wait": "5s",
                "com.openfaas.retry.max_wait": "1m",
            },
            {"exec_timeout": "2m"},
        ),
    )
    assert problems == []
    assert policy is not None
    assert policy.retry.max_attempts == 30 and policy.retry.http_codes == {429, 503}
    assert policy.retry.initial_wait == 5.0 and policy.retry.max_wait == 60.0
    assert policy.upstream_timeout == 120.0 + EXEC_TIMEOUT_GRACE  # the watchdog's own answer comes first
    assert policy.retry.backoff == p.default.retry.backoff  # what no annotation names stays the queue's
    only_codes, _ = from_annotations(p.default, Function({"com.openfaas.retry.codes": "429"}, {}))
    assert only_codes is not None and only_codes.retry.max_attempts == 10 and only_codes.upstream_timeout == 60.0


@pytest.mark.parametrize(
    ("annotations", "env", "bad"),
    [
        ({"com.openfaas.retry.attempts": "many"}, {}, "com.openfaas.retry.attempts"),
        ({"com.openfaas.retry.attempts": "0"}, {}, "com.openfaas.retry.attempts"),
        ({"com.openfaas.retry.codes": "429,abc"}, {}, "com.openfaas.retry.codes"),
        ({"com.openfaas.retry.codes": "700"}, {}, "com.openfaas.retry.codes"),
        ({"com.openfaas.retry.min_wait": "soon"}, {}, "com.openfaas.retry.min_wait"),
        ({"com.openfaas.retry.min_wait": "10m"}, {}, "com.openfaas.retry.min_wait"),  # above the max wait
        ({}, {"exec_timeout": "forever"}, "exec_timeout"),
    ],
)
def test_an_invalid_annotation_is_ignored_and_named(annotations, env, bad):
    """As OpenFaaS documents: 'if the value is invalid, then the default for the queue-worker will be used'."""
    p = policies()
    policy, problems = from_annotations(p.default, Function(annotations, env))
    assert [key for key, _, _ in problems] == [bad]
    assert policy is None  # nothing valid left: the queue's policy


def test_exec_timeout_in_seconds_and_no_limit():
    p = policies()
    seconds = from_annotations(p.default, Function({}, {"exec_timeout": "30"}))[0]
    assert seconds is not None and seconds.upstream_timeout == 31.0
    assert from_annotations(p.default, Function({}, {"exec_timeout": "0"}))[0] is None  # 0: the watchdog has none


def test_overrides_win_annotations_apply_to_the_rest_and_unknown_functions_ask(tmp_path, caplog):
    p = policies(tmp_path, overrides={"pinned": {"retry": {"maxAttempts": 3}}})
    asked: list[str] = []

    class Catalog:
        def knows(self, name: str) -> bool:
            return name in ("pinned", "annotated", "plain", "odd")

        def want(self, name: str) -> None:
            asked.append(name)

    p.catalog = Catalog()  # type: ignore[assignment]
    caplog.set_level(logging.INFO, logger="jetqueue.worker")
    annotated = {"com.openfaas.retry.attempts": "30"}
    functions = {"pinned": Function(annotated, {}), "annotated": Function(annotated, {}), "plain": Function()}
    functions["odd"] = Function({"com.openfaas.retry.attempts": "x"}, {})
    p.annotations_changed(functions, set(functions))
    p.annotations_changed(functions, set(functions))  # read again: nothing logged twice
    assert p("pinned").retry.max_attempts == 3  # queues.yaml functionOverrides: authoritative
    assert p("annotated").retry.max_attempts == 30
    assert p("plain") is p.default and p("odd") is p.default
    assert asked == []
    assert p("new-one") is p.default and asked == ["new-one"]  # not known: the queue's policy, and a look-up
    del functions["annotated"]  # removed at the gateway: the catalog names it as changed
    p.annotations_changed(functions, {"annotated"})
    assert p("annotated") is p.default and p("pinned").retry.max_attempts == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("annotation com.openfaas.retry.attempts='x' ignored" in m for m in messages) == 1
    assert sum("its queues.yaml functionOverrides apply" in m for m in messages) == 1


def test_the_openfaas_internal_setting_reaches_every_policy(tmp_path):
    p = policies(tmp_path, overrides={"f": {"retry": {"openfaasInternal": True}}}, retry_openfaas_internal=False)
    assert p.default.retry.openfaas_internal is False and p("f").retry.openfaas_internal is True
