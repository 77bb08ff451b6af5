"""A real HTTP server that answers as the OpenFaaS gateway does, for the parts jetqueue talks to:

- its API, as OpenFaaS documents it (faas api-docs/spec.openapi.yml, faas-provider types.FunctionStatus):
  `GET /system/functions[?namespace=]` (a JSON list of FunctionStatus) and `GET /system/function/<name>[?namespace=]`
  (one, or 404), behind basic auth (401 without it);
- its function proxy `/function/<name>[/<path>]`: each function answers by the handler a test sets; `scaling`
  answers as a function scaling from zero does behind the OpenFaaS gateway (faas-provider's proxy): 404 with
  `X-OpenFaaS-Internal: proxy` until its replica is up, then the function's own 200.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.servers import free_port

DEFAULT_NAMESPACE = "openfaas-fn"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def scaling_from_zero(cold_answers: int) -> Handler:
    """A function behind the OpenFaaS gateway with no replica yet: the gateway's own 404 `cold_answers` times."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.Response:
        state["n"] += 1
        if state["n"] <= cold_answers:
            return web.Response(
                status=404,
                text=f"No endpoints available for: {request.match_info['name']}.",
                headers={"X-OpenFaaS-Internal": "proxy"},
            )
        return web.Response(text=f"ran after {cold_answers} cold answers", content_type="text/plain")

    return handler


@dataclass
class OpenFaaSGateway:
    user: str = "admin"
    password: str = "s3cret"
    # namespace → function name → FunctionStatus fields (annotations, envVars, labels, ...)
    functions: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: defaultdict(dict))
    handlers: dict[str, Handler] = field(default_factory=dict)
    api_calls: list[tuple[str, str]] = field(default_factory=list)  # (path, namespace) of each API request
    invocations: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))  # headers
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def function_url(self) -> str:
        return f"{self.url}/function/{{function}}"

    def deploy(self, name: str, namespace: str = DEFAULT_NAMESPACE, **status: Any) -> None:
        self.functions[namespace][name] = {"name": name, "image": f"example/{name}:1", "namespace": namespace, **status}

    async def start(self) -> OpenFaaSGateway:
        app = web.Application()
        app.router.add_get("/system/functions", self._list)
        app.router.add_get("/system/function/{name}", self._one)
        app.router.add_route("*", "/function/{name}{path:.*}", self._invoke)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = self.port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def _authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return request.headers.get("Authorization") == expected

    async def _list(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace", DEFAULT_NAMESPACE)
        self.api_calls.append((request.path, request.query.get("namespace", "")))
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        return web.json_response(list(self.functions[namespace].values()))

    async def _one(self, request: web.Request) -> web.Response:
        namespace = request.query.get("namespace", DEFAULT_NAMESPACE)
        self.api_calls.append((request.path, request.query.get("namespace", "")))
        if not self._authorized(request):
            return web.Response(status=401, text="Unauthorized")
        found = self.functions[namespace].get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="Not Found")
        return web.json_response(found)

    async def _invoke(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.invocations[name].append(dict(request.headers))
        await request.read()
        handler = self.handlers.get(name)
        if handler is None:  # not deployed: the gateway's scaling handler answers, without the internal mark
            return web.Response(status=404, text=f"error finding function {name}.{DEFAULT_NAMESPACE}")
        return await handler(request)
