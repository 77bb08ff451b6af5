"""message.py: how a call travels as a NATS message, and what no message may carry."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import nats
import pytest

from jetqueue import contract
from jetqueue.contract import BadMessage, Call, CallIds


@pytest.mark.parametrize(
    "path",
    ["/..", "/.", "/a/../b", "/%2e%2e", "/%2E%2E/x", "/a/%2e", "/%2fx", "/a%2Fb", "/a%5cb", "/%252e%252e", "/a\\b"],
)
def test_paths_that_could_climb_are_refused(path):
    assert contract.path_problem(path) is not None
    with pytest.raises(BadMessage):
        contract.decode("faas-request.echo", b"", {contract.H_PATH: path}, "id-1")


@pytest.mark.parametrize(
    "path", ["", "/", "/v1/items", "/a%20b", "/..e", "/e..", "/.well-known", "/a;b=c", "/%E2%82%AC"]
)
def test_ordinary_paths_pass_unchanged(path):
    assert contract.path_problem(path) is None
    assert contract.decode("faas-request.echo", b"", {contract.H_PATH: path}, "id-1").path == path


@pytest.mark.parametrize("bad", ["a b", "x", "/a b", "/a?b", "/a#b", "/a\r\nX: y", "/é", "/%zz"])
def test_paths_must_be_percent_encoded(bad):
    assert contract.path_problem(bad) is not None


def test_query_is_kept_encoded_and_checked():
    assert contract.decode("q.f", b"", {contract.H_QUERY: "a=1&b=%2F?c"}, "id-1").query == "a=1&b=%2F?c"
    for bad in ("a b", "a#b", "a\nb"):
        with pytest.raises(BadMessage):
            contract.decode("q.f", b"", {contract.H_QUERY: bad}, "id-1")


async def test_header_size_is_what_the_server_counts(nats_server):
    """A message of exactly max_payload (headers + body) is stored; one byte more is refused by the server."""
    headers = Call("id-1", "faas-request", "echo", path="/a", headers={"X-Pad": " v\r\nw "}).to_headers()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(name="SIZES", subjects=["sizes.>"])
    exact = nc.max_payload - contract.header_size(headers)
    assert (await js.publish("sizes.a", b"x" * exact, headers=headers)).seq == 1
    errors: list[Exception] = []

    async def on_error(e: Exception) -> None:
        errors.append(e)

    over = await nats.connect(nats_server.url, allow_reconnect=False, error_cb=on_error)
    await over.publish("sizes.b", b"x" * (exact + 1), headers=headers)
    for _ in range(100):
        if over.is_closed or errors:
            break
        await asyncio.sleep(0.05)
    assert errors or over.is_closed  # the server dropped the connection (it answers -ERR or resets it)
    assert (await js.stream_info("SIZES")).state.messages == 1
    await over.close()
    await nc.close()


def test_derived_ids_differ_across_queues_and_stream_resets():
    from datetime import UTC, datetime

    first = datetime(2026, 1, 1, tzinfo=UTC)
    again = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)  # the same sequence in a stream made again later
    ids = {
        contract.derived_call_id("alpha", 1, first),
        contract.derived_call_id("beta", 1, first),
        contract.derived_call_id("alpha", 1, again),
    }
    assert len(ids) == 3 and all(contract.CALL_ID.match(i) for i in ids)
    assert contract.decode("alpha.f", b"", {}, contract.derived_call_id("alpha", 1, first)).call_id in ids


def test_generated_call_ids_are_random_uuid4s():
    ids = CallIds()
    made = [ids.new() for _ in range(1000)]  # several reads of randomness (256 ids each)
    assert len(set(made)) == len(made)
    for call_id in made:
        parsed = uuid.UUID(call_id)
        assert str(parsed) == call_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert contract.CALL_ID.match(call_id)


def test_a_forked_child_makes_other_call_ids_than_its_parent():
    ids = CallIds()
    ids.new()  # randomness read before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, ids.new().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != ids.new()


def test_call_ids_made_from_threads_at_once_are_all_different(monkeypatch):
    """One generator serves the process, and the client may be used from threads: no id is handed out twice (a
    repeated id would make JetStream drop the second call as a duplicate). Reading randomness lets other threads
    run (the GIL is released): here it is slow, and every read gives the same bytes, so two threads that both
    read at once would hand out the same id."""

    def slow_urandom(n: int) -> bytes:
        time.sleep(0.05)
        return bytes(range(256)) * (n // 256)  # every 16-byte id of the first 16 differs

    monkeypatch.setattr(os, "urandom", slow_urandom)
    ids, made = CallIds(), []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        made.append(ids.new())

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 8, made


def test_a_held_call_carries_the_level_of_its_subject_whatever_its_headers_said():
    normal = contract.Call(call_id="c1", queue="q", function="f")
    _, headers = contract.held_message(normal, {contract.H_PRIORITY: "high"}, 1e9, "k")
    assert contract.H_PRIORITY not in headers  # a stale header would promote it on its next move
    high = contract.Call(call_id="c2", queue="q", function="f", priority=contract.Priority.HIGH)
    _, headers = contract.held_message(high, {}, 1e9, "k")
    assert contract.message_priority(headers) is contract.Priority.HIGH
    assert contract.decode("q_P1_LO.f", b"", {}, "id").priority is contract.Priority.LOW
    counts = {"q.f": 2, "q_HI.f": 1, "q_LO.g.ns": 4, "other.thing": 9, "not a call": 1}
    assert contract.calls_per_function("q", counts) == {"f": 3, "g.ns": 4}
