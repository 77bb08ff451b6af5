"""The states of a call, as its status record (`GET /async-calls/{id}`) shows them.

(scheduled →) queued → running → (retrying → running)* → succeeded | failed | dead-lettered | expired |
cancelled. `scheduled`: submitted for later (`X-Delay`, `X-Not-Before`); `failed`: the function answered a
status that is not retried; `dead-lettered`: attempts exhausted; `expired`: older than maxEventAge. The last
three end in the dead-letter stream.
"""

from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset(
    {CallState.SUCCEEDED, CallState.FAILED, CallState.DEAD_LETTERED, CallState.EXPIRED, CallState.CANCELLED}
)
