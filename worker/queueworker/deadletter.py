"""Dead letters: a call that cannot succeed is stored, with why, in `OF_<queue>_DLQ`, before it is terminated.

A dead letter must fit the server's max_payload (headers + body), or nats-server drops the worker's
connection and the message comes back to fail the same way. What jetqueue adds is cut first (the error
text); a message published by someone else right at the limit then loses its forwarded
headers, and as a last resort the tail of its body; `Jq-Dlq-Truncated` says what was cut.
"""

from __future__ import annotations

import time

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from jetqueue import contract

HEADER_VALUE_MAX = 1024
REDACTED = "[redacted]"
_CREDENTIALS = ("authorization", "cookie", "proxy-")  # forwarded request headers that carry credentials
# The Jq-Dlq-Truncated header at its longest, kept free whenever anything must be cut.
_MARKER = contract.header_size({contract.H_DLQ_TRUNCATED: "error,subject,headers,body"}) - contract.header_size({})


def credential(header: str) -> bool:
    """Is this a forwarded request header that carries credentials (redacted in dead letters, and never shown by
    the dashboard)?"""
    return header.startswith(contract.H_FORWARD) and header[len(contract.H_FORWARD) :].lower().startswith(_CREDENTIALS)


def _clean(value: str) -> str:
    """Header-safe: one line, bounded."""
    return " ".join(str(value).split())[:HEADER_VALUE_MAX]


def fit(headers: dict[str, str], body: bytes, limit: int) -> tuple[dict[str, str], bytes]:
    """Headers and body of a dead letter cut to `limit` bytes as nats-server counts them."""
    if contract.header_size(headers) + len(body) <= limit:
        return headers, body
    cut: list[str] = []

    def over() -> int:
        return contract.header_size(headers) + _MARKER + len(body) - limit

    # Never the subject: `jetqueue dlq replay` sends the call back to it.
    for key, label in ((contract.H_DLQ_ERROR, "error"),):
        if over() > 0 and headers.get(key):
            cut.append(label)
            while over() > 0 and headers[key]:  # a character is at least a byte: each pass cuts enough
                headers[key] = headers[key][: max(0, len(headers[key]) - over())]
    for key in sorted((k for k in headers if k.startswith(contract.H_FORWARD)), key=lambda k: -len(headers[k])):
        if over() <= 0:
            break
        del headers[key]
        if "headers" not in cut:
            cut.append("headers")
    if over() > 0:
        cut.append("body")
        body = body[: max(0, len(body) - over())]
    headers[contract.H_DLQ_TRUNCATED] = ",".join(cut)
    return headers, body


async def dead_letter(
    js: JetStreamContext,
    msg: Msg,
    queue: str,
    function: str,
    reason: str,
    status: int | None,
    attempts: int,
    error: str,
    limit: int,
    keep_credentials: bool = False,
    key: str | None = None,
) -> None:
    """Publish the original message with its failure to the DLQ stream and wait for the PubAck. Dead letters
    are kept for weeks and shown by `jetqueue dlq show`: credentials are redacted unless asked to keep them.
    `key` names what is dead-lettered, for deduplication; by default the stored message."""
    # No Nats-* header of the original goes along: publish expectations (Nats-Expected-Stream, ...), TTLs or
    # the marks of a fired message schedule would make the server refuse the dead letter, every time.
    headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
    if not keep_credentials:
        for k in headers:
            if credential(k):
                headers[k] = REDACTED
    seq = msg.metadata.sequence.stream
    headers.update(
        {
            # The same stored message dead-lettered twice (a crash before term) is deduplicated.
            contract.H_MSG_ID: "dlq-"
            + (key or contract.stored_message_key(msg.metadata.stream, seq, msg.metadata.timestamp)),
            contract.H_DLQ_REASON: reason,
            contract.H_DLQ_STATUS: "" if status is None else str(status),
            contract.H_DLQ_ATTEMPTS: str(attempts),
            contract.H_DLQ_TIME: str(time.time_ns()),
            contract.H_DLQ_SUBJECT: _clean(msg.subject),
            contract.H_DLQ_ERROR: _clean(error),
        }
    )
    headers, body = fit(headers, msg.data, limit)
    ok = contract.FUNCTION_NAME.match(function) or function == contract.CALLBACK_DLQ_FUNCTION
    safe_fn = function if ok else "_invalid"
    await js.publish(contract.dlq_subject(queue, safe_fn), body, headers=headers)
