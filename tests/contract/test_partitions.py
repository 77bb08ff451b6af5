"""partitions.py and the partition names: one choice, the same in every process; names no other queue can have."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib

from jetqueue import contract

CHOICES = [(f, n, k) for f in ("echo", "resize", "a.ns") for n in (1, 2, 3, 7, 32) for k in ("", "tenant-42")]


def test_the_choice_is_crc32_of_the_key_or_the_function():
    for function, n, key in CHOICES:
        assert contract.choose_partition(function, n, key) == zlib.crc32((key or function).encode()) % n
    assert {contract.choose_partition(f"fn-{i}", 3) for i in range(30)} == {0, 1, 2}  # every partition is used
    assert contract.choose_partition("anything", 1, "key") == 0


def test_the_choice_is_the_same_in_another_process_with_another_hash_seed():
    """Never Python's salted hash(): a gateway, a client and a worker in other processes choose alike."""
    code = f"from jetqueue import contract; print([contract.choose_partition(f, n, k) for f, n, k in {CHOICES!r}])"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([contract.choose_partition(f, n, k) for f, n, k in CHOICES])


def test_partition_keys_are_checked():
    assert contract.partition_key_problem("tenant-42/eu:1") is None
    for bad in ("", "has space", "x" * 129, "tab\there", "é"):
        assert contract.partition_key_problem(bad), bad


def test_partition_names_collide_with_no_queue_and_read_back():
    assert contract.stream_name("q", 0) == "OF_q" and contract.subject("q", "f", 0) == "q.f"  # as before partitions
    assert contract.stream_name("q", 2) == "OF_q_P2" and contract.subject("q", "f.ns", 2) == "q_P2.f.ns"
    assert contract.queue_subjects("q", 1) == "q_P1.>"
    for stream, where in {
        "OF_q": ("q", 0),
        "OF_q_P1": ("q", 1),
        "OF_q-p1": ("q-p1", 0),  # a queue named q-p1 is not a partition of q
        "OF_q_P0": None,
        "OF_q_P01": None,
        "OF_q_P32": None,  # beyond MAX_PARTITIONS
        "OF_q_DLQ": None,
        "OF_q_CB": None,
        "OF_q_SCHED": None,
        "OF_q_P1_DLQ": None,
        "KV_jetqueue-calls-q": None,
    }.items():
        assert contract.partition_of_stream(stream) == where, stream
        assert contract.queue_of_stream(stream) == (where[0] if where else None), stream
    assert contract.parse_subject("q_P2.f.ns") == ("q", "f.ns")
    assert contract.status_bucket_name("q") == "jetqueue-calls-q"
    assert contract.status_bucket_name("q", 1) == "jetqueue-calls-q_P1"
    assert contract.cancel_bucket_name("q") == "jetqueue-cancels-q"
    assert not contract.QUEUE_NAME.match("q_P1")  # what makes these names no queue's own


def test_ids_made_for_a_queue_carry_its_hint_and_stay_uuid4():
    import uuid

    call_id = contract.new_call_id("billing")
    assert uuid.UUID(call_id).version == 4 and str(uuid.UUID(call_id)) == call_id
    assert contract.hint_of(call_id) == contract.queue_hint("billing")
    assert contract.hint_of("my-own-id") == "" and contract.CALL_ID.match(call_id)
    assert len({contract.new_call_id("billing") for _ in range(1000)}) == 1000


def test_status_shards_spread_call_ids():
    shards = [contract.status_shard(contract.new_call_id("q"), 3) for _ in range(300)]
    assert set(shards) == {0, 1, 2} and min(shards.count(k) for k in range(3)) > 50
    assert contract.status_shard("any", 1) == 0
