"""The message contract between whoever enqueues a call and the queue-worker.

Anyone with a NATS client can enqueue a call by following it (README, "Message contract"):

* subject ``<queue>.<function>``; ``function`` is ``name`` or ``name.namespace``;
* payload: the raw request body, byte for byte;
* headers: ``Nats-Msg-Id`` and ``X-Call-Id`` (the call id), ``X-Start-Time`` (unix ns),
  ``Jq-Method``, ``Jq-Path``, ``Jq-Query``, ``Jq-Callback-Url``, and each original HTTP header
  that should reach the function as ``Jq-Header-<Name>``.

Every header but the subject is optional: a bare ``nats pub faas-request.echo hello`` is a POST
to ``echo`` with the stream sequence as its call id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from jetqueue.contract.names import CALL_ID, FUNCTION_NAME, QUEUE_NAME

H_MSG_ID = "Nats-Msg-Id"
H_CALL_ID = "X-Call-Id"
H_START = "X-Start-Time"
H_METHOD = "Jq-Method"
H_PATH = "Jq-Path"
H_QUERY = "Jq-Query"
H_CALLBACK = "Jq-Callback-Url"
H_FORWARD = "Jq-Header-"
# Dead-letter metadata: every header of a dead letter that jetqueue adds starts with this.
H_DLQ = "Jq-Dlq-"
H_DLQ_REASON = H_DLQ + "Reason"
H_DLQ_STATUS = H_DLQ + "Status"
H_DLQ_ATTEMPTS = H_DLQ + "Attempts"
H_DLQ_ERROR = H_DLQ + "Error"
H_DLQ_SUBJECT = H_DLQ + "Subject"
H_DLQ_TIME = H_DLQ + "Time"

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Headers that describe the HTTP hop, not the call, and ours that must not be forwarded.
_NOT_FORWARDED = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Content-Length",
        "X-Callback-Url",
        "X-Call-Id",
        "X-Start-Time",
        "Expect",
    )
)


def new_call_id() -> str:
    return str(uuid.uuid4())


class BadMessage(ValueError):
    """A message that cannot be turned into a call: it goes to the dead letters, never retried."""


@dataclass
class Call:
    call_id: str
    queue: str
    function: str
    body: bytes = b""
    method: str = "POST"
    path: str = ""
    query: str = ""
    callback_url: str = ""
    start_time_ns: int = field(default_factory=time.time_ns)
    headers: dict[str, str] = field(default_factory=dict)

    def to_headers(self) -> dict[str, str]:
        h = {H_MSG_ID: self.call_id, H_CALL_ID: self.call_id, H_START: str(self.start_time_ns)}
        if self.method != "POST":
            h[H_METHOD] = self.method
        if self.path:
            h[H_PATH] = self.path
        if self.query:
            h[H_QUERY] = self.query
        if self.callback_url:
            h[H_CALLBACK] = self.callback_url
        for k, v in self.headers.items():
            h[H_FORWARD + k] = v
        return h


def forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers that should reach the function."""
    return {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}


def parse_subject(subj: str) -> tuple[str, str]:
    queue, sep, function = subj.partition(".")
    if not sep or not QUEUE_NAME.match(queue) or not FUNCTION_NAME.match(function):
        raise BadMessage(f"subject {subj!r} is not <queue>.<function> (function: name or name.namespace)")
    return queue, function


def decode(subj: str, data: bytes, headers: Mapping[str, str] | None, seq: int) -> Call:
    """Turn a JetStream message into a Call. Raises BadMessage when it cannot be delivered."""
    queue, function = parse_subject(subj)
    h = dict(headers or {})
    call_id = h.get(H_CALL_ID) or h.get(H_MSG_ID) or f"seq-{seq}"
    if not CALL_ID.match(call_id):
        raise BadMessage(f"call id {call_id[:80]!r} has characters outside [A-Za-z0-9_=.-] or is too long")
    method = h.get(H_METHOD, "POST").upper()
    if method not in METHODS:
        raise BadMessage(f"method {method[:20]!r} is not one of {', '.join(sorted(METHODS))}")
    path = h.get(H_PATH, "")
    if path and (not path.startswith("/") or any(c in path for c in "\r\n?#")):
        raise BadMessage(f"path {path[:80]!r} must start with / and hold no ?, # or line breaks")
    try:
        start = int(h.get(H_START) or time.time_ns())
    except ValueError as e:
        raise BadMessage(f"bad numeric header: {e}") from None
    forwarded = {k[len(H_FORWARD) :]: v for k, v in h.items() if k.startswith(H_FORWARD)}
    return Call(
        call_id=call_id,
        queue=queue,
        function=function,
        body=data,
        method=method,
        path=path,
        query=h.get(H_QUERY, ""),
        callback_url=h.get(H_CALLBACK, ""),
        start_time_ns=start,
        headers=forwarded,
    )
