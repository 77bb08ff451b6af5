"""A no-op function server for benchmarks, run as its own process (as a real function would be).

`python bench/noop_function.py PORT`. Any method on `/function/{name}` answers 200 "ok". A function named
`sleep-<ms>` waits that long first (the scale-out figure). Every call is recorded cheaply, so the benchmark
can read what arrived without adding a hop:

* `GET /_bench/stats`: calls, first and last arrival (unix ns), calls per function; with `?latencies=1` also
  arrival − `X-Start-Time` of each call that carried one (ns), i.e. publish → invoked.
* `POST /_bench/reset`: forget everything recorded.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter

from aiohttp import web


class Record:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first = 0
        self.last = 0
        self.functions: Counter[str] = Counter()
        self.latencies: list[int] = []


record = Record()


async def noop(request: web.Request) -> web.Response:
    now = time.time_ns()
    r = record
    if not r.count:
        r.first = now
    r.count += 1
    r.last = now
    name = request.match_info["name"]
    r.functions[name] += 1
    start = request.headers.get("X-Start-Time")
    if start:
        r.latencies.append(now - int(start))
    await request.read()
    if name.startswith("sleep-"):
        await asyncio.sleep(int(name[6:]) / 1000)
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    r = record
    out: dict[str, object] = {"count": r.count, "first": r.first, "last": r.last, "functions": dict(r.functions)}
    if request.query.get("latencies"):
        out["latencies"] = r.latencies
    return web.json_response(out)


async def reset(_: web.Request) -> web.Response:
    record.reset()
    return web.Response(text="reset")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/_bench/stats", stats)
    app.router.add_post("/_bench/reset", reset)
    app.router.add_route("*", "/function/{name}", noop)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
