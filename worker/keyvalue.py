"""The latest value of a key in one of jetqueue's key-value buckets, read from the bucket stream's leader: a
replica (nats-py's get on a bucket that allows direct gets) may answer a moment behind, and a reader that then
writes must not go back."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract

STREAM_NOT_FOUND = 10059  # JetStream's error code when the bucket's stream is missing (a missing key is 10037)


async def latest(js: JetStreamContext, bucket: str, key: str) -> tuple[bytes, int] | None:
    """The key's value and revision; None when it has none, or was deleted or purged. Raises NotFoundError when
    the bucket itself is missing."""
    try:
        m = await js.get_last_msg(contract.kv_stream_name(bucket), contract.kv_subject(bucket, key))
    except NotFoundError as e:
        if e.err_code == STREAM_NOT_FOUND:
            raise
        return None
    if not m.data or (m.headers and "KV-Operation" in m.headers):  # DEL or PURGE
        return None
    return m.data, m.seq or 0
