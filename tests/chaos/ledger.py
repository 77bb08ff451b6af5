"""The ledger every chaos test ends with: accepted calls versus what the functions and the status saw."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from jetqueue import contract
from jetqueue.callstatus import QueueStatus
from jetqueue.contract import FINAL
from jetqueue.statuslookup import StatusLookup

T = TypeVar("T")
FINAL_WAIT = 30.0  # seconds a call's final status record may take to land after its last attempt


@dataclass
class Ledger:
    name: str
    accepted: list[str] = field(default_factory=list)  # call ids that got a 202 / PubAck
    refused: int = 0  # answered 503: not accepted
    queue: str = contract.DEFAULT_QUEUE
    partitions: int = 1  # the queue's: its status buckets

    async def check(
        self, nc: Client, invoked: list[str], max_duplicates: int, max_unrecorded: int = 0
    ) -> dict[str, int]:
        """Every accepted call reached the function at least once and reached one final state; at most
        `max_unrecorded` calls that ran have no status record at all (a worker killed -9 between a call's ack and
        its status record, which is written after the ack, off the call's slot: statuswriter.py)."""
        js = nc.jetstream()
        lookup = StatusLookup(js, {self.queue: QueueStatus.of(js, self.queue, self.partitions, 3600.0)})
        counts = Counter(invoked)
        missing = [c for c in self.accepted if counts[c] == 0]
        states: dict[str, str | None] = {}
        # Status records are written off the call's slot, after it ends (statuswriter.py): on a loaded machine
        # the last ones land a while after the function saw the call. Asked again until final, within a bound.
        deadline = time.monotonic() + FINAL_WAIT
        while True:  # (an unrecorded call is asked until the deadline: it may only be late)
            for call_id in self.accepted:
                if states.get(call_id) not in FINAL:
                    states[call_id] = await asked_again(functools.partial(state_of, lookup, call_id))
            if all(v in FINAL for v in states.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        finals: Counter[str | None] = Counter(states.values())
        duplicates = sum(counts[c] - 1 for c in self.accepted if counts[c] > 1)
        report = {
            "accepted": len(self.accepted),
            "refused": self.refused,
            "missing": len(missing),
            "duplicates": duplicates,
            **{f"final {k}": v for k, v in finals.items()},
        }
        print(f"ledger [{self.name}]: " + ", ".join(f"{k} {v}" for k, v in report.items()))
        assert not missing, f"accepted calls never invoked: {missing[:5]}"
        assert set(finals) - {None} <= FINAL, f"calls not in a final state: {finals}"
        assert finals[None] <= max_unrecorded, f"calls without a status record: {finals}"
        assert duplicates <= max_duplicates, report
        return report


async def state_of(lookup: StatusLookup, call_id: str) -> str | None:
    """The call's state as the gateway finds it: its own record's, else its submission record's (callstatus.py);
    None: no record."""
    entry = await lookup.get(call_id)
    return str(entry.record.get("state")) if entry else None


async def asked_again(ask: Callable[[], Awaitable[T]], within: float = 60.0) -> T:
    """`ask()`, again while it times out (or a bucket cannot be opened yet): after a fault, the bucket's stream may
    still be electing a leader when the queue's stream already has one."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await ask()
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
