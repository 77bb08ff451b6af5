"""The submission records of calls just accepted (`queued`), sent on to NATS beside the next call published.

A record is written once its call's PubAck arrived, in a turn of the event loop of its own; published there, it
went out apart from the calls, and the gateway spent about a tenth more CPU per submission under wrk than with the
record published just before the next call (`send`), in the same turn and so the same write, as it is now; after
HOLD seconds when no call follows. Nothing is promised by it that was not before: the record
was only ever buffered behind the call, lost with the connection (the worker's own records follow), and until it
can be read back the gateway answers for it from memory (accept.py `recent`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nats.aio.client import Client

from jetqueue.callstatus import StatusStore

HOLD = 0.002  # seconds a record waits for a call to travel with


class SubmissionRecords:
    def __init__(self, connection: Callable[[], Client | None]) -> None:
        self._connection = connection
        self._unsent: list[tuple[StatusStore, str, bytes]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> bool:
        return bool(self._unsent)

    def add(self, store: StatusStore, call_id: str, record: bytes) -> None:
        self._unsent.append((store, call_id, record))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HOLD, self._held_long_enough)

    def _held_long_enough(self) -> None:
        self._timer = None
        if self._unsent:
            task = asyncio.ensure_future(self.send())
            self._sending.add(task)  # kept until done: the loop holds tasks only weakly
            task.add_done_callback(self._sending.discard)

    async def send(self) -> None:
        """Publish the records held (each a plain publish: buffered, sent with what else goes out this turn)."""
        unsent, self._unsent = self._unsent, []
        nc = self._connection()
        if nc is None:
            return
        for store, call_id, record in unsent:
            await store.submitted(nc, call_id, record)

    async def close(self) -> None:
        """Send what is held (on shutdown, before the connection drains)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.send()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._sending)
