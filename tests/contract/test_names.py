"""names.py: every name formed once; the schema's copies of the name patterns are checked against it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jetqueue import contract

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "queues.schema.json").read_text())


def patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from patterns(value)


def test_the_schema_names_queues_and_functions_as_the_contract_does():
    label = contract.DNS_LABEL
    found = [p for p in patterns(SCHEMA) if label in p]
    assert found, "the schema no longer checks names"
    assert set(found) <= {contract.QUEUE_NAME.pattern, contract.FUNCTION_NAME.pattern}, set(found)


def test_names_derive_from_the_queue():
    assert contract.stream_name("q") == "OF_q" and contract.dlq_stream_name("q") == "OF_q_DLQ"
    assert contract.callback_stream_name("q") == "OF_q_CB" and contract.durable_name("q") == "q-workers"
    assert [contract.queue_of_stream(s) for s in ("OF_q", "OF_q_DLQ", "OF_q_CB", "KV_x")] == ["q", None, None, None]
    assert contract.subject("q", "f.ns") == "q.f.ns" and contract.dlq_subject("q", "f") == "_DLQ.q.f"
