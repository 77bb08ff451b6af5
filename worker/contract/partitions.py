"""Which partition a call goes to, and which status bucket holds its records: one rule, the same in every process.

- A call's partition (`choose_partition`): a stable hash (CRC-32, never Python's salted `hash()`) of its
  `X-Partition-Key` when the caller sends one, else of its function's name, modulo the queue's partitions. So one
  function's calls (or one key's) keep their order within one partition. The gateway, `client.submit_nats`, the
  schedule Mover (a due call moves into its partition) and `jetqueue dlq replay` all call this; the key travels
  with the call (`Jq-Partition-Key`) so a held retry lands where its call was.
- A call's status bucket (`status_shard`): the same hash of its call id modulo the queue's partitions, so a lookup
  by id needs only the queue.
- A call's queue, from its id alone: ids made by jetqueue (`contract.new_call_id(queue)`) start with `queue_hint`
  (8 hex digits of the queue's CRC-32; still a UUID4 in form). A caller-supplied id carries no hint: the gateway then
  looks in every routed queue (gateway/statuslookup.py).
"""

from __future__ import annotations

import re
import zlib

from jetqueue.contract.names import MAX_PARTITIONS

PARTITION_KEY = "X-Partition-Key"  # the HTTP header a caller picks a partition with
MAX_PARTITION_KEY = 128
_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_PARTITION_KEY}}}$")  # visible ASCII: a NATS header value, as sent
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def choose_partition(function: str, partitions: int, key: str = "") -> int:
    """The partition (0 .. partitions-1) of a call of `function`, or of `key` when one is given."""
    if partitions <= 1:
        return 0
    return _crc(key or function) % min(partitions, MAX_PARTITIONS)


def partition_key_problem(key: str) -> str | None:
    """Why an `X-Partition-Key` cannot be used (the gateway answers 400 with it), or None."""
    if _KEY.match(key):
        return None
    return f"{PARTITION_KEY} must be 1-{MAX_PARTITION_KEY} visible ASCII characters (no spaces)"


def status_shard(call_id: str, shards: int) -> int:
    """Which of a queue's `shards` status buckets holds the records of `call_id`."""
    return _crc(call_id) % shards if shards > 1 else 0


def queue_hint(queue: str) -> str:
    """What an id made for `queue` starts with."""
    return format(_crc(queue), "08x")


def hint_of(call_id: str) -> str:
    """The queue hint an id made by jetqueue carries; '' for any other id (a caller's own)."""
    return call_id[:8] if _UUID.match(call_id) else ""
