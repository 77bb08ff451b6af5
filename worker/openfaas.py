"""OpenFaaS as the functions' provider: the names OpenFaaS gives things, and the functions' annotations read from
the OpenFaaS gateway's API.

`FunctionCatalog` keeps every function's annotations and environment in memory and refreshes them in the
background: `GET /system/functions` every refresh interval (the default namespace, and each namespace a call named
as `name.namespace`), and `GET /system/function/<name>` within a moment of the first call of a function it did not
know (`want`). Basic auth, as the OpenFaaS gateway's API requires. A call never waits for it: the worker's
policies (queueworker/policy.py) and the gateway's routing (gateway/routing.py) read what it last found, and a
function not yet known runs by queues.yaml until it is. When the endpoint is absent or refuses us, the log says
so once and queues.yaml alone decides.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from jetqueue import __version__

log = logging.getLogger("jetqueue.openfaas")

INTERNAL_HEADER = "X-OpenFaaS-Internal"  # on an answer of the OpenFaaS gateway itself (its proxy), not a function's
QUEUE = "com.openfaas.queue"
RETRY_ATTEMPTS = "com.openfaas.retry.attempts"
RETRY_CODES = "com.openfaas.retry.codes"
RETRY_MIN_WAIT = "com.openfaas.retry.min_wait"
RETRY_MAX_WAIT = "com.openfaas.retry.max_wait"
EXEC_TIMEOUT = "exec_timeout"  # the watchdog's own limit, in the function's environment
USER_AGENT = f"queue-worker/{__version__}"  # as OpenFaaS's queue-worker sends on callbacks
DEFAULT_USER_KEY = "basic-auth-user"  # the keys of the OpenFaaS chart's `basic-auth` Secret
DEFAULT_PASSWORD_KEY = "basic-auth-password"

REQUEST_TIMEOUT = 5.0
LOOKUPS_AT_ONCE = 8  # functions looked up one by one at a time
MAX_WANTED = 1_000  # unknown functions waiting for a look-up: function names come from callers, bound them
MAX_NAMESPACES = 64  # namespaces listed on each refresh (from calls named `name.namespace`)
MAX_FUNCTIONS = 50_000


@dataclass(frozen=True)
class Function:
    """What the OpenFaaS gateway says about one function (its FunctionStatus): annotations and environment."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


# Told what the catalog now holds and which names changed (added, changed or gone): it updates only those.
Listener = Callable[[Mapping[str, Function], Set[str]], None]


def _function(status: Any) -> Function | None:
    if not isinstance(status, dict) or not isinstance(status.get("name"), str):
        return None
    annotations, env = status.get("annotations") or {}, status.get("envVars") or {}
    if not isinstance(annotations, dict) or not isinstance(env, dict):
        return None
    return Function({str(k): str(v) for k, v in annotations.items()}, {str(k): str(v) for k, v in env.items()})


class FunctionCatalog:
    """The functions the OpenFaaS gateway at `url` knows, by the name calls use (`name`, or `name.namespace`)."""

    def __init__(self, url: str, user: str, password: str, refresh: float, listeners: list[Listener]) -> None:
        self.url = url.rstrip("/")
        # Basic auth, as the OpenFaaS gateway's API takes it (sent with every request of this session).
        self.auth = (
            {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()} if user else {}
        )
        self.refresh = refresh
        self.listeners = listeners
        self.functions: dict[str, Function] = {}
        self.absent: set[str] = set()  # looked up since the last refresh and not found
        self.refreshed_at = 0.0  # time.time() of the last complete refresh; 0: none yet
        self._wanted: dict[str, None] = {}  # insertion-ordered set
        self._namespaces: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._trouble = ""  # what the log last said was wrong ("" = nothing), so it says it once

    @classmethod
    def of(cls, s: Any, *listeners: Listener) -> FunctionCatalog | None:
        """The catalog the settings ask for (`openfaas_url`), or None when annotations are not read."""
        if not s.openfaas_url:
            return None
        return cls(s.openfaas_url, s.openfaas_user, s.openfaas_password, s.openfaas_refresh, list(listeners))

    def knows(self, name: str) -> bool:
        return name in self.functions or name in self.absent

    def want(self, name: str) -> None:
        """A call of a function not known yet: look it up soon. Cheap, never waits (hot path)."""
        if name in self._wanted or len(self._wanted) >= MAX_WANTED:
            return
        self._wanted[name] = None
        self._wake.set()

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=LOOKUPS_AT_ONCE),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            headers={"User-Agent": f"jetqueue/{__version__}", "Accept": "application/json", **self.auth},
        )
        self._task = asyncio.create_task(self.run(), name="openfaas-catalog")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def run(self) -> None:
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                await self.refresh_all()
                next_refresh = time.monotonic() + self.refresh
            self._wake.clear()
            names = list(self._wanted)[:LOOKUPS_AT_ONCE]
            if names:
                found = await asyncio.gather(*(self.look_up(n) for n in names))
                for n in names:
                    self._wanted.pop(n, None)
                self._publish({**self.functions, **{n: f for n, f in zip(names, found, strict=True) if f}})
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_refresh - time.monotonic()))

    async def refresh_all(self) -> None:
        """Every function of the default namespace, and of each namespace calls named."""
        found: dict[str, Function] = {}
        for namespace in ["", *sorted(self._namespaces)]:
            listed = await self._get("/system/functions", namespace)
            if not isinstance(listed, list):
                return  # said in the log; what was read before stays
            for status in listed[:MAX_FUNCTIONS]:
                function = _function(status)
                if function is not None:
                    found[status["name"] + (f".{namespace}" if namespace else "")] = function
        if not self.refreshed_at or self._trouble:
            log.info("function annotations: %d function(s) read from %s", len(found), self.url)
        self._trouble = ""
        self.refreshed_at = time.time()
        self.absent.clear()
        self._publish(found)

    async def look_up(self, name: str) -> Function | None:
        """One function, at once: called before it was known. None when there is none (or the look-up failed)."""
        base, _, namespace = name.partition(".")
        if namespace and len(self._namespaces) < MAX_NAMESPACES:
            self._namespaces.add(namespace)
        status = await self._get(f"/system/function/{base}", namespace, missing_ok=True)
        function = _function(status) if status else None
        if function is None:  # not found, or the look-up failed: not asked again before the next refresh
            if len(self.absent) >= MAX_FUNCTIONS:
                self.absent.clear()
            self.absent.add(name)
        return function

    def _publish(self, found: dict[str, Function]) -> None:
        old = self.functions
        changed = {n for n, f in found.items() if old.get(n) != f} | (old.keys() - found.keys())
        if not changed:
            return
        self.functions = found
        for listener in self.listeners:
            listener(found, changed)

    async def _get(self, path: str, namespace: str, missing_ok: bool = False) -> Any:
        """The JSON answer; {} for a 404 when `missing_ok` (no such function); None when it failed (logged)."""
        assert self._session is not None
        url = self.url + path
        try:
            async with self._session.get(
                url, params={"namespace": namespace} if namespace else None, allow_redirects=False
            ) as r:
                if r.status == 404 and missing_ok:
                    return {}
                if r.status == 200:
                    return await r.json(content_type=None)
                if r.status in (401, 403):
                    self._say(f"{url} refused our credentials ({r.status}); check JETQUEUE_OPENFAAS_USER/_PASSWORD")
                elif r.status == 404:
                    self._say(f"{url} answered 404: not the OpenFaaS gateway's API (JETQUEUE_OPENFAAS_URL)")
                else:
                    self._say(f"{url} answered {r.status}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
            self._say(f"cannot read {url}: {type(e).__name__}: {e}")
        return None

    def _say(self, trouble: str) -> None:
        if trouble == self._trouble:
            return
        self._trouble = trouble
        if self.refreshed_at:
            since = time.strftime("%H:%M:%S UTC", time.gmtime(self.refreshed_at))
            then = f"the annotations read at {since} ({len(self.functions)} function(s)) stay in use until it answers"
        else:
            then = "queues.yaml alone decides until it answers"
        log.error("function annotations: %s; %s", trouble, then)
