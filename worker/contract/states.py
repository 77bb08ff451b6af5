"""The states of a call, as its status record (`GET /async-calls/{id}`) shows them.

queued → running → (retrying → running)* → succeeded | failed | dead-lettered | cancelled.
`failed`: the function answered a status that is not retried; `dead-lettered`: attempts exhausted.
Both end in the dead-letter stream.
"""

from __future__ import annotations

from enum import StrEnum


class CallState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead-lettered"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({CallState.SUCCEEDED, CallState.FAILED, CallState.DEAD_LETTERED, CallState.CANCELLED})
