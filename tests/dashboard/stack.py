"""The processes a browser test clicks through: nats-server, a function server, a queue-worker, a gateway serving
the dashboard (JETQUEUE_DASHBOARD, behind a bearer token), and `jetqueue dashboard` on its own; plus headless
Debian chromium through chromium-driver (selenium), or the reason it cannot run here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import NatsServer, free_port

TOKEN = "dashboard-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def browser_missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements/dev.txt)"
    if not any(shutil.which(b) for b in CHROMIUM):
        return "no chromium on PATH (Debian: apt-get install -y chromium chromium-driver)"
    if not shutil.which("chromedriver"):
        return "no chromedriver on PATH (Debian: apt-get install -y chromium-driver)"
    return None


def browser(width: int = 1360, height: int = 900) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(p for b in CHROMIUM if (p := shutil.which(b)))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.implicitly_wait(0)
    return driver


def env(**kw: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("JETQUEUE_")}
    out.update({"JETQUEUE_" + k.upper(): v for k, v in kw.items()})
    out["PYTHONPATH"] = str(ROOT)
    return out


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.2)


@dataclass
class Stack:
    base: Path
    nats: NatsServer | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    gateway: str = ""
    dashboard: str = ""  # `jetqueue dashboard` on its own
    flag: Path = Path()

    def start(self, name: str, argv: list[str], environ: dict[str, str]) -> None:
        log = open(self.base / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen(argv, env=environ, stdout=log, stderr=log, cwd=ROOT))

    def submit(self, function: str, body: bytes = b"hello", **headers: str) -> str:
        request = urllib.request.Request(
            f"{self.gateway}/async-function/{function}",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", **headers},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 202
            return str(r.headers["X-Call-Id"])

    def status(self, call_id: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.gateway}/async-calls/{call_id}", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return dict(json.loads(r.read()))


@contextmanager
def running_stack(base: Path) -> Iterator[Stack]:
    base.mkdir(parents=True, exist_ok=True)
    s = Stack(base, flag=base / "flaky-succeeds")
    s.nats = NatsServer(base / "nats").start()
    try:
        fn_port, gw_port, dash_port = free_port(), free_port(), free_port()
        py = sys.executable
        s.start("functions", [py, "-m", "tests.dashboard.functions", str(fn_port), str(s.flag)], env())
        common = {"nats_url": s.nats.url, "log_format": "json"}
        worker = env(
            **common,
            function_url=f"http://127.0.0.1:{fn_port}/function/{{function}}",
            http_host="127.0.0.1",
            http_port=str(worker_port := free_port()),
            max_retry_attempts="1",
        )
        s.start("worker", [py, "-m", "jetqueue", "worker"], worker)
        gateway = env(**common, http_host="127.0.0.1", http_port=str(gw_port), dashboard="true", auth_token=TOKEN)
        s.start("gateway", [py, "-m", "jetqueue", "gateway"], gateway)
        s.start("dashboard", [py, "-m", "jetqueue", "dashboard", "--port", str(dash_port)], env(**common))
        s.gateway, s.dashboard = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{dash_port}"
        for url in (f"{s.gateway}/readyz", f"http://127.0.0.1:{worker_port}/readyz", f"{s.dashboard}/healthz"):
            wait_http(url)
        yield s
    finally:
        for p in s.procs:
            p.terminate()
        for p in s.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        s.nats.stop()


def until(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.25) -> Any:
    """Wait for `check` to give something true; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with suppress(Exception):
            if last := check():
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
