"""The gateway's floor, run as its own process as the gateway is: the least an HTTP front to JetStream can do.

`python bench/floor_gateway.py NATS_URL QUEUE PORT`. `POST /async-function/{name}`: read the body, publish it
to `<queue>.<name>` with nats-py, wait for JetStream's PubAck, answer 202. No call id, no headers, no
validation, no status record, no metrics. `GET /healthz` answers 200 once NATS is connected.
"""

from __future__ import annotations

import sys

import nats
from aiohttp import web


def build(nats_url: str, queue: str) -> web.Application:
    app = web.Application()
    state: dict[str, nats.js.JetStreamContext] = {}

    async def connect(app: web.Application) -> None:
        nc = await nats.connect(nats_url.split(","))
        app["nc"] = nc
        state["js"] = nc.jetstream()

    async def close(app: web.Application) -> None:
        await app["nc"].close()

    async def submit(request: web.Request) -> web.Response:
        body = await request.read()
        await state["js"].publish(f"{queue}.{request.match_info['name']}", body)
        return web.Response(status=202)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.on_startup.append(connect)
    app.on_cleanup.append(close)
    app.router.add_post("/async-function/{name}", submit)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    web.run_app(build(sys.argv[1], sys.argv[2]), host="127.0.0.1", port=int(sys.argv[3]), access_log=None, print=None)
