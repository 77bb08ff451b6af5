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

import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_QUEUE = "faas-request"
DLQ_PREFIX = "_DLQ"  # queue names are DNS labels, so no queue subject can start with "_"
CANCEL_SUBJECT = "_JQ.cancel"
STATUS_BUCKET = "jetqueue-calls"

H_MSG_ID = "Nats-Msg-Id"
H_CALL_ID = "X-Call-Id"
H_START = "X-Start-Time"
H_METHOD = "Jq-Method"
H_PATH = "Jq-Path"
H_QUERY = "Jq-Query"
H_CALLBACK = "Jq-Callback-Url"
H_FORWARD = "Jq-Header-"
# Dead-letter metadata
H_DLQ_REASON = "Jq-Dlq-Reason"
H_DLQ_STATUS = "Jq-Dlq-Status"
H_DLQ_ATTEMPTS = "Jq-Dlq-Attempts"
H_DLQ_ERROR = "Jq-Dlq-Error"
H_DLQ_SUBJECT = "Jq-Dlq-Subject"
H_DLQ_TIME = "Jq-Dlq-Time"

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
FUNCTION_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})?$")
QUEUE_NAME = re.compile(rf"^{_LABEL}$")
# Call ids are KV keys and header values: keep them to a safe alphabet.
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=.-]{0,127}$")
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


def stream_name(queue: str) -> str:
    return f"OF_{queue}"


def durable_name(queue: str) -> str:
    return f"{queue}-workers"


def dlq_stream_name(queue: str) -> str:
    return f"OF_{queue}_DLQ"


def subject(queue: str, function: str) -> str:
    return f"{queue}.{function}"


def dlq_subject(queue: str, function: str) -> str:
    return f"{DLQ_PREFIX}.{queue}.{function}"


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
