"""Where the ack is extended: one ticker for every call being handled sends `+WPI` (in progress) once a
call has gone ack_wait/2 without a signal, so a long call is never redelivered while it runs.

One task for all calls is cheaper than a timer per call; a call is tracked from the moment it is
fetched until it is settled, so slow status writes or dead-letter publishes are covered too.
"""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.msg import Msg

MIN_INTERVAL = 0.5


class AckExtender:
    def __init__(self, ack_wait: float) -> None:
        self.half = max(MIN_INTERVAL, ack_wait / 2)
        self._beats: dict[int, tuple[Msg, float]] = {}  # id(msg): Msg is an unhashable dataclass

    def track(self, msg: Msg) -> None:
        self._beats[id(msg)] = (msg, asyncio.get_running_loop().time())

    def untrack(self, msg: Msg) -> None:
        self._beats.pop(id(msg), None)

    def __len__(self) -> int:
        return len(self._beats)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.half / 4)
            now = asyncio.get_running_loop().time()
            for key, (msg, last) in list(self._beats.items()):
                if now - last >= self.half * 0.75 and key in self._beats:
                    self._beats[key] = (msg, now)
                    with contextlib.suppress(Exception):  # disconnected: the next beat or the ack will do
                        await msg.in_progress()
