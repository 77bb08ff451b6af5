"""Sample functions and a callback receiver for `jetqueue dev`, on loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

LIMITED_CAPACITY = 3


@dataclass
class Samples:
    flaky_seen: set[str] = field(default_factory=set)
    limited_running: int = 0
    callbacks: dict[str, tuple[float, str]] = field(default_factory=dict)  # call id -> (time, status)
    callback_statuses: Counter[str] = field(default_factory=Counter)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/function/echo{path:.*}", self.echo)
        app.router.add_route("*", "/function/sleep{path:.*}", self.sleep)
        app.router.add_route("*", "/function/flaky{path:.*}", self.flaky)
        app.router.add_route("*", "/function/limited{path:.*}", self.limited)
        app.router.add_route("*", "/function/fail{path:.*}", self.fail)
        app.router.add_post("/callback", self.callback)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type=request.content_type)

    async def sleep(self, request: web.Request) -> web.Response:
        """Sleeps for the number of seconds in the body (default 0.5, at most 30)."""
        try:
            seconds = min(30.0, float((await request.read()).decode() or 0.5))
        except ValueError:
            return web.Response(status=400, text="body must be a number of seconds")
        await asyncio.sleep(seconds)
        return web.Response(text=f"slept {seconds:g}s")

    async def flaky(self, request: web.Request) -> web.Response:
        """503 on a call's first attempt, 200 after."""
        call_id = request.headers.get("X-Call-Id", "")
        if call_id not in self.flaky_seen:
            self.flaky_seen.add(call_id)
            return web.Response(status=503, text="warming up")
        return web.Response(text="ok on retry")

    async def limited(self, request: web.Request) -> web.Response:
        """At most LIMITED_CAPACITY calls at once; 429 with Retry-After above that."""
        if self.limited_running >= LIMITED_CAPACITY:
            return web.Response(status=429, headers={"Retry-After": "1"}, text="too many")
        self.limited_running += 1
        try:
            await asyncio.sleep(0.2)
            return web.Response(text="done")
        finally:
            self.limited_running -= 1

    async def fail(self, request: web.Request) -> web.Response:
        return web.Response(status=500, text="this function always fails")

    async def callback(self, request: web.Request) -> web.Response:
        await request.read()
        call_id = request.headers.get("X-Call-Id", "")
        status = request.headers.get("X-Function-Status", "")
        if call_id not in self.callbacks:
            self.callbacks[call_id] = (time.monotonic(), status)
            self.callback_statuses[status] += 1
        return web.Response(status=204)


async def _stats(samples: Samples, request: web.Request) -> web.Response:
    return web.json_response({"callbacks": len(samples.callbacks), "statuses": dict(samples.callback_statuses)})


def main() -> None:
    """`python -m jetqueue.generator.samples PORT`: the sample functions as a server (the kind suite deploys it)."""
    import sys

    samples = Samples()
    app = samples.app()
    app.router.add_get("/stats", lambda r: _stats(samples, r))
    web.run_app(app, host="0.0.0.0", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8080, access_log=None)


if __name__ == "__main__":
    main()
