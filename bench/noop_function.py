"""A no-op function server for benchmarks, run as its own process (as a real function would be)."""

from __future__ import annotations

import sys

from aiohttp import web


async def noop(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(text="ok")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/function/{name}", noop)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
