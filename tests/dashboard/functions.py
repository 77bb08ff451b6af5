"""Functions for the browser tests, as a process of its own (the test's own thread drives the browser):
`python -m tests.dashboard.functions PORT FLAG`. `/function/ok` answers 200; `/function/flaky` answers 500 until the
file FLAG exists, then 200."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aiohttp import web


def main() -> None:
    port, flag = int(sys.argv[1]), Path(sys.argv[2])

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="done")

    async def flaky(request: web.Request) -> web.Response:
        await request.read()
        if os.path.exists(flag):  # noqa: ASYNC240 (a stat, on a test machine)
            return web.Response(text="done at last")
        return web.Response(status=500, text="database <b>unreachable</b>: connection refused")

    app = web.Application()
    app.router.add_route("*", "/function/ok{path:.*}", ok)
    app.router.add_route("*", "/function/flaky{path:.*}", flaky)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
