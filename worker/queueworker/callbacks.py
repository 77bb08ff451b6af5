"""Callbacks: POST the function's result to X-Callback-Url, retried, never blocking the consumer.

A bounded queue feeds a few sender tasks; when it is full the callback is dropped and counted
(the consumer must not slow down because a callback receiver did).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from jetqueue import __version__
from jetqueue.queueworker.metrics import WorkerMetrics

log = logging.getLogger("jetqueue.callback")


@dataclass
class CallbackRequest:
    url: str
    body: bytes
    headers: dict[str, str]
    call_id: str


class CallbackSender:
    def __init__(
        self,
        queue_name: str,
        metrics: WorkerMetrics,
        attempts: int = 3,
        timeout: float = 10.0,
        first_wait: float = 0.5,
        senders: int = 8,
        capacity: int = 10_000,
    ) -> None:
        self.queue_name = queue_name
        self.metrics = metrics
        self.attempts = attempts
        self.timeout = timeout
        self.first_wait = first_wait
        self._queue: asyncio.Queue[CallbackRequest] = asyncio.Queue(capacity)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        self._tasks = [asyncio.create_task(self._run(), name=f"callback-{i}") for i in range(senders)]

    def submit(self, req: CallbackRequest) -> None:
        req.headers.setdefault("User-Agent", f"jetqueue/{__version__}")
        try:
            self._queue.put_nowait(req)
        except asyncio.QueueFull:
            self.metrics.callbacks.labels(self.queue_name, "dropped").inc()
            log.error("callback queue full; dropped callback", extra={"call_id": req.call_id})

    async def _run(self) -> None:
        while True:
            req = await self._queue.get()
            try:
                await self._deliver(req)
            finally:
                self._queue.task_done()

    async def _deliver(self, req: CallbackRequest) -> None:
        wait = self.first_wait
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(req.url, data=req.body, headers=req.headers) as resp:
                    await resp.read()
                    if resp.status < 500 and resp.status not in (408, 429):
                        self.metrics.callbacks.labels(self.queue_name, "delivered").inc()
                        return
                    error = f"HTTP {resp.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                error = f"{type(e).__name__}: {e}"
            if attempt < self.attempts:
                await asyncio.sleep(wait)
                wait *= 2
        self.metrics.callbacks.labels(self.queue_name, "failed").inc()
        log.warning(
            "callback to %s failed after %d attempts: %s", req.url, self.attempts, error, extra={"call_id": req.call_id}
        )

    async def close(self, timeout: float) -> None:
        """Give queued callbacks up to `timeout` seconds, then stop."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.warning("%d callbacks not sent at shutdown", self._queue.qsize())
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._session.close()
