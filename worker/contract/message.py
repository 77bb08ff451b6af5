"""The message contract between whoever enqueues a call and the queue-worker.

Anyone with a NATS client can enqueue a call by following it (schemas/message-contract.md):

* subject ``<queue>.<function>``; ``function`` is ``name`` or ``name.namespace``;
* payload: the raw request body, byte for byte;
* headers: ``Nats-Msg-Id`` and ``X-Call-Id`` (the call id), ``X-Start-Time`` (unix ns),
  ``Jq-Method``, ``Jq-Path``, ``Jq-Query``, ``Jq-Callback-Url``, ``Jq-Failure-Callback-Url``, ``Jq-Partition-Key``
  (the caller's ``X-Partition-Key``), ``Jq-Priority`` (the caller's ``X-Priority``, when not normal), and each
  original HTTP header that should reach the function as
  ``Jq-Header-<Name>``; a call that waited for its time carries ``Jq-Not-Before`` (unix seconds) and, as a retry,
  ``Jq-Attempts`` (the attempts already made).

A partitioned queue's calls of partition p >= 1 are on ``<queue>_P<p>.<function>`` (contract/partitions.py); on a
queue with priorities, high and low calls on ``<queue>_HI.<function>``, ``<queue>_LO.<function>``
(contract/priorities.py).

Every header but the subject is optional: a bare ``nats pub faas-request.echo hello`` is a POST
to ``echo`` with a call id derived from its queue, stream sequence and storage time.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote

from jetqueue.contract.names import CALL_ID, FUNCTION_NAME, due_subject, schedule_subject, split_level, split_token
from jetqueue.contract.partitions import queue_hint
from jetqueue.contract.priorities import Priority, parse_priority

H_MSG_ID = "Nats-Msg-Id"
H_CALL_ID = "X-Call-Id"
H_START = "X-Start-Time"
H_METHOD = "Jq-Method"
H_PATH = "Jq-Path"
H_QUERY = "Jq-Query"
H_CALLBACK = "Jq-Callback-Url"
H_PARTITION_KEY = "Jq-Partition-Key"  # the caller's X-Partition-Key: a due or replayed call finds its partition again
H_CONCURRENCY_KEY = "Jq-Concurrency-Key"  # the caller's X-Concurrency-Key: keyConcurrency and keyRate count by it
H_PRIORITY = "Jq-Priority"  # the caller's X-Priority (not normal): a due, held or replayed call keeps its level
H_FAILURE_CALLBACK = "Jq-Failure-Callback-Url"  # called only when the call ends failed (dead letter or expired)
H_CALLBACK_ATTEMPT = "Jq-Callback-Attempt"  # on a stored callback: the delivery attempt it is waiting for
H_CALLBACK_KEY = "Jq-Callback-Key"  # on a stored callback, every attempt: its one dead letter's id
H_CALLBACK_BUSY = "Jq-Callback-Busy"  # on a stored callback: times in a row its receiver did not answer
H_FORWARD = "Jq-Header-"
H_NOT_BEFORE = "Jq-Not-Before"  # unix seconds: a scheduled call's time; its age (maxEventAge) counts from it
H_ATTEMPTS = "Jq-Attempts"  # attempts made before this message was published (a retry held for later)
H_SCHEDULE = "Nats-Schedule"  # ADR-51 message schedules (nats-server 2.12+)
H_SCHEDULE_TARGET = "Nats-Schedule-Target"
# Dead-letter metadata: every header of a dead letter that jetqueue adds starts with this.
H_DLQ = "Jq-Dlq-"
H_DLQ_REASON = H_DLQ + "Reason"
H_DLQ_STATUS = H_DLQ + "Status"
H_DLQ_ATTEMPTS = H_DLQ + "Attempts"
H_DLQ_ERROR = H_DLQ + "Error"
H_DLQ_SUBJECT = H_DLQ + "Subject"
H_DLQ_TIME = H_DLQ + "Time"
H_DLQ_TRUNCATED = H_DLQ + "Truncated"

NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's max_payload unless configured (headers + body)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Jq-Path and Jq-Query travel percent-encoded, exactly as the client sent them (RFC 3986 characters only),
# and the worker sends them on unchanged: nothing re-encodes or normalises them on the way.
_PCHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_PATH = re.compile(rf"^(?:/{_PCHAR}*)*$")
_QUERY = re.compile(rf"^(?:{_PCHAR}|[/?])*$")
_CLIMBS = frozenset({".", ".."})
# nats-py's header block: "NATS/1.0\r\n", then "Key: Value\r\n" per header, then "\r\n".
_HEADER_BLOCK = len(b"NATS/1.0\r\n") + len(b"\r\n")
_HEADER_LINE = len(b": \r\n")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})
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
        "X-Failure-Callback-Url",
        "X-Call-Id",
        "X-Start-Time",
        "X-Delay",
        "X-Not-Before",
        "X-Partition-Key",
        "X-Concurrency-Key",
        "X-Priority",
        "Expect",
    )
)


_VARIANT = {f"{n:x}": "89ab"[n & 3] for n in range(16)}  # a hex digit with the RFC 4122 variant bits set


class CallIds:
    """New call ids: random UUID4 strings, from randomness read 256 ids at a time (a getrandom system call and a
    UUID object per id were 4-5% of the gateway's CPU per submission). An id made for a queue starts with the
    queue's hint (contract/partitions.py), so its status is found from the id alone; 90 random bits remain."""

    def __init__(self) -> None:
        self._forget()
        if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
            os.register_at_fork(after_in_child=self._forget)  # a forked child must not hand out the parent's ids

    def _forget(self) -> None:
        self._lock = threading.Lock()  # one process-wide generator: the client may be used from threads
        self._random, self._at = b"", 0

    def new(self, queue: str = "") -> str:
        with self._lock:
            at = self._at
            if at == len(self._random):
                self._random, at = os.urandom(4096), 0
            self._at = at + 16
            h = self._random[at : at + 16].hex()
        first = queue_hint(queue) if queue else h[:8]
        return f"{first}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


new_call_id = CallIds().new  # the one generator: gateway, client and tests


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
    failure_callback_url: str = ""
    start_time_ns: int = field(default_factory=time.time_ns)
    headers: dict[str, str] = field(default_factory=dict)
    not_before: float = 0.0  # unix seconds; 0: not scheduled
    prior_attempts: int = 0  # attempts made before this message (a retry that waited for its time)
    partition_key: str = ""  # the caller's X-Partition-Key ('': the partition follows the function)
    concurrency_key: str = ""  # the caller's X-Concurrency-Key ('': no key limit applies; queueworker/keylimit.py)
    priority: Priority = Priority.NORMAL  # its level (X-Priority): the subject it is stored on says it too

    def age(self, now: float) -> float:
        """Seconds since the call could first run: its start, or its scheduled time (maxEventAge counts this)."""
        return now - max(self.start_time_ns / 1e9, self.not_before)

    def to_headers(self) -> dict[str, str]:
        h = {H_MSG_ID: self.call_id, H_CALL_ID: self.call_id, H_START: str(self.start_time_ns)}
        if self.not_before:
            h[H_NOT_BEFORE] = f"{self.not_before:.3f}"
        if self.prior_attempts:
            h[H_ATTEMPTS] = str(self.prior_attempts)
        if self.method != "POST":
            h[H_METHOD] = self.method
        if self.path:
            h[H_PATH] = self.path
        if self.query:
            h[H_QUERY] = self.query
        if self.callback_url:
            h[H_CALLBACK] = self.callback_url
        if self.partition_key:
            h[H_PARTITION_KEY] = self.partition_key
        if self.concurrency_key:
            h[H_CONCURRENCY_KEY] = self.concurrency_key
        if self.priority is not Priority.NORMAL:
            h[H_PRIORITY] = self.priority.value
        if self.failure_callback_url:
            h[H_FAILURE_CALLBACK] = self.failure_callback_url
        for k, v in self.headers.items():
            h[H_FORWARD + k] = v
        return h


def path_problem(path: str) -> str | None:
    """Why a percent-encoded sub-path cannot be sent to a function, or None.

    A segment that is `.` or `..`, or holds a slash or backslash, once or twice decoded, could climb out of
    `/function/<name>` (an HTTP client or a proxy may normalise or decode it): refused, not rewritten."""
    if not path:
        return None
    if not _PATH.match(path):
        return "path must start with / and hold only percent-encoded URL characters"
    for segment in path.split("/")[1:]:
        once = unquote(segment)
        for decoded in (once, unquote(once)):
            if decoded in _CLIMBS or "/" in decoded or "\\" in decoded:
                return f"path segment {segment[:40]!r} could leave the function's path (dot segment or slash)"
    return None


def query_problem(query: str) -> str | None:
    return None if _QUERY.match(query) else "query must hold only percent-encoded URL characters"


def header_size(headers: Mapping[str, str]) -> int:
    """Bytes of the header block nats-py sends for `headers`; nats-server counts it against max_payload
    together with the body (and closes the connection of a client that sends more)."""
    return _HEADER_BLOCK + sum(
        len(k.strip().encode()) + _HEADER_LINE + len(v.strip().translate(_NEWLINES).encode())
        for k, v in headers.items()
        if k.strip()
    )


def forwardable(headers: Mapping[str, str]) -> dict[str, str]:
    """The request headers that should reach the function. A NATS header carries one value per name, so a
    repeated header is folded into one line as HTTP allows (RFC 9110 5.3; `Cookie` with `; `)."""
    out: dict[str, str] = {}
    names: dict[str, str] = {}  # lower-case name -> the spelling first seen
    for k, v in headers.items():
        low = k.lower()
        if low in _NOT_FORWARDED:
            continue
        if low in names:
            out[names[low]] += ("; " if low == "cookie" else ", ") + v
        else:
            names[low] = k
            out[k] = v
    return out


def parse_subject(subj: str) -> tuple[str, str]:
    """(queue, function) of a call's subject, in any partition and level of its queue."""
    return parse_call_subject(subj)[:2]


def parse_call_subject(subj: str) -> tuple[str, str, Priority]:
    """(queue, function, level) of a call's subject."""
    token, sep, function = subj.partition(".")
    token, level = split_level(token)
    found = split_token(token)
    if not sep or found is None or not FUNCTION_NAME.match(function):
        raise BadMessage(
            f"subject {subj!r} is not <queue>.<function> or <queue>_P<partition>.<function>, with _HI or _LO "
            "after the queue for a level (function: name or name.namespace)"
        )
    return found[0], function, level


def calls_per_function(queue: str, subjects: Mapping[str, int]) -> dict[str, int]:
    """Calls per function from a work stream's per-subject counts, every level's summed; a subject that is no call
    of `queue`'s (an adopted stream's own) is left out."""
    out: dict[str, int] = {}
    for subj, n in subjects.items():
        try:
            owner, function, _ = parse_call_subject(subj)
        except BadMessage:
            continue
        if owner == queue:
            out[function] = out.get(function, 0) + n
    return out


def message_priority(headers: Mapping[str, str] | None) -> Priority:
    """The level a message's Jq-Priority names (normal when none, or not a level)."""
    return parse_priority((headers or {}).get(H_PRIORITY, "")) or Priority.NORMAL


def derived_call_id(queue: str, seq: int, stored_at: datetime) -> str:
    """The id of a call published without one: its queue, stream sequence and storage time (µs), so it is
    the same on every redelivery and unique across queues and across a stream deleted and made again."""
    return f"{queue}-{seq}-{int(stored_at.timestamp() * 1_000_000)}"


def stored_message_key(stream: str, seq: int, stored_at: datetime) -> str:
    """Names one stored message for deduplication (its dead letter, its callback): stream, sequence and storage
    time, because a stream deleted and made again (`jetqueue reset`) counts its sequences from 1 again."""
    return f"{stream}-{seq}-{int(stored_at.timestamp() * 1_000_000)}"


def decode(subj: str, data: bytes, headers: Mapping[str, str] | None, fallback_id: str, stored_ns: int = 0) -> Call:
    """Turn a JetStream message into a Call. Raises BadMessage when it cannot be delivered.

    `fallback_id` is the call id of a message that carries none (`derived_call_id`); `stored_ns` (when the
    message was stored) the start time of one that carries none: the same on every delivery, so such a call
    ages (maxEventAge) and is told from a later one (cancel) like any other."""
    queue, function, level = parse_call_subject(subj)
    h = dict(headers or {})
    call_id = h.get(H_CALL_ID) or h.get(H_MSG_ID) or fallback_id
    if not CALL_ID.match(call_id):
        raise BadMessage(f"call id {call_id[:80]!r} has characters outside [A-Za-z0-9_=.-] or is too long")
    method = h.get(H_METHOD, "POST").upper()
    if method not in METHODS:
        raise BadMessage(f"method {method[:20]!r} is not one of {', '.join(sorted(METHODS))}")
    path, query = h.get(H_PATH, ""), h.get(H_QUERY, "")
    if (problem := path_problem(path) or query_problem(query)) is not None:
        raise BadMessage(f"{problem}: {(path + '?' + query)[:120]!r}")
    try:
        start = int(h.get(H_START) or stored_ns or time.time_ns())
        not_before = float(h.get(H_NOT_BEFORE) or 0.0)
        prior = int(h.get(H_ATTEMPTS) or 0)
    except ValueError as e:
        raise BadMessage(f"bad numeric header: {e}") from None
    if prior < 0 or not math.isfinite(not_before):
        raise BadMessage(f"{H_ATTEMPTS} must not be negative and {H_NOT_BEFORE} must be a time")
    forwarded = {k[len(H_FORWARD) :]: v for k, v in h.items() if k.startswith(H_FORWARD)}
    return Call(
        call_id=call_id,
        queue=queue,
        function=function,
        body=data,
        method=method,
        path=path,
        query=query,
        callback_url=h.get(H_CALLBACK, ""),
        failure_callback_url=h.get(H_FAILURE_CALLBACK, ""),
        start_time_ns=start,
        headers=forwarded,
        not_before=not_before,
        prior_attempts=prior,
        partition_key=h.get(H_PARTITION_KEY, ""),
        concurrency_key=h.get(H_CONCURRENCY_KEY, ""),
        priority=level,
    )


def schedule_headers(at: float, target: str) -> dict[str, str]:
    """The headers that make nats-server hold a message until unix time `at`, then store it on `target` (a subject
    of the same stream). Schedules have second precision: rounded up, so a message is never released early."""
    when = datetime.fromtimestamp(math.ceil(at), UTC)
    return {H_SCHEDULE: f"@at {when.strftime('%Y-%m-%dT%H:%M:%SZ')}", H_SCHEDULE_TARGET: target}


def held_message(call: Call, headers: Mapping[str, str], at: float, key: str) -> tuple[str, dict[str, str]]:
    """The subject (in the queue's schedule stream) and headers that hold a call, stored with `headers`, until
    unix time `at`. `key` makes the publish idempotent (Nats-Msg-Id); the subject is unique per schedule, so
    none replaces another. The server then stores it on the due subject, and the worker moves it into the queue."""
    kept = {k: v for k, v in headers.items() if not k.lower().startswith("nats-")}
    kept.update(
        {
            # A call published without an id or start time keeps the ones it was given on its first attempt.
            H_CALL_ID: call.call_id,
            H_START: str(call.start_time_ns),
            H_MSG_ID: key,
            **schedule_headers(at, due_subject(call.queue, call.function)),
        }
    )
    kept.pop(H_PRIORITY, None)  # the level of the subject it came from, whatever a header said
    if call.priority is not Priority.NORMAL:
        kept[H_PRIORITY] = call.priority.value
    return schedule_subject(call.queue, call.function, uuid.uuid4().hex), kept
