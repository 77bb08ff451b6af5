"""functiondiscovery.py: the calls per function of a stream, read from its subject map only when it changed."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from jetqueue.queueworker import functiondiscovery
from jetqueue.queueworker.functiondiscovery import Discovery


async def test_discovery_reads_the_subject_map_only_when_the_stream_changed(monkeypatch):
    """The stream's state is asked every time; its subject map (one entry per function with calls) only when its last
    sequence moved, or every RECHECK_EVERY for redeliveries."""
    monkeypatch.setattr(functiondiscovery, "RECHECK_EVERY", 3600.0)
    asked: list[str | None] = []
    state = SimpleNamespace(last_seq=10, messages=3, subjects=None)

    async def stream_info(name: str, subjects_filter: str | None = None) -> Any:
        asked.append(subjects_filter)
        subjects = {"faas-request.a": 2, "faas-request.b.ns": 1} if subjects_filter else None
        return SimpleNamespace(state=SimpleNamespace(**{**vars(state), "subjects": subjects}))

    discovery = Discovery(SimpleNamespace(stream_info=stream_info), "faas-request", "OF_faas-request")  # type: ignore[arg-type]
    assert [await discovery.look(now=0.0) for _ in range(3)] == [True, False, False]
    assert asked == [None, "faas-request.>", None, None]  # nothing published since: the map is not read again
    assert discovery.counts == {"a": 2, "b.ns": 1}
    state.last_seq, state.messages = 11, 0
    assert await discovery.look(now=1.0)
    assert asked[-1] is None and discovery.counts == {}  # an empty stream: no map to read
