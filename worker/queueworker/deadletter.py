"""Dead letters: a call that cannot succeed is stored, with why, in `OF_<queue>_DLQ`, before it is terminated."""

from __future__ import annotations

import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetqueue import contract

HEADER_VALUE_MAX = 1024


def _clean(value: str) -> str:
    """Header-safe: one line, bounded."""
    return " ".join(str(value).split())[:HEADER_VALUE_MAX]


async def dead_letter(
    js: JetStreamContext,
    msg: Msg,
    queue: str,
    function: str,
    reason: str,
    status: int | None,
    attempts: int,
    error: str,
) -> None:
    """Publish the original message with its failure to the DLQ stream and wait for the PubAck."""
    headers = {k: v for k, v in (msg.headers or {}).items() if k != contract.H_MSG_ID}
    seq = msg.metadata.sequence.stream
    headers.update(
        {
            # The same stored message dead-lettered twice (a crash before term) is deduplicated.
            contract.H_MSG_ID: f"dlq-{msg.metadata.stream}-{seq}",
            contract.H_DLQ_REASON: reason,
            contract.H_DLQ_STATUS: "" if status is None else str(status),
            contract.H_DLQ_ATTEMPTS: str(attempts),
            contract.H_DLQ_ERROR: _clean(error),
            contract.H_DLQ_SUBJECT: _clean(msg.subject),
            contract.H_DLQ_TIME: str(time.time_ns()),
        }
    )
    safe_fn = function if contract.FUNCTION_NAME.match(function) else "_invalid"
    await js.publish(contract.dlq_subject(queue, safe_fn), msg.data, headers=headers)
