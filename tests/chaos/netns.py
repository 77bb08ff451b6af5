"""A private multi-host network on one machine: one network namespace per NATS node, joined by veth pairs to a
bridge in the root namespace, on a 10.a.b.0/24 of its own. Needs root and iproute2.

    root namespace                      namespace jq<pid>n<i>
    bridge jq<pid>br 10.a.b.1/24 ── jq<pid>h<i> ═veth═ jq<pid>p<i> 10.a.b.1<i>/24 (+ lo up)

Everything is named after the test process's pid, so concurrent runs do not collide, and `destroy()` removes
it all (deleting a namespace deletes the veth pair in it; the bridge is deleted last)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers import NatsServer, meta_current

CLIENT_PORT, ROUTE_PORT, MONITOR_PORT = 4222, 6222, 8222  # each node has a namespace, so ports of its own


class NetError(RuntimeError):
    pass


def ip(*args: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run iproute2 (`ip ...`), raising NetError with its stderr when it fails."""
    return _run(["ip", *args], check=check, timeout=timeout)


def tc(*args: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return _run(["tc", *args], check=check, timeout=timeout)


def _run(command: list[str], check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise NetError(f"`{' '.join(command)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can (checked without changing anything)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux only (this is {sys.platform})"
    if os.geteuid() != 0:
        return f"needs root to create network namespaces, veth pairs and a bridge (running as uid {os.geteuid()})"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"needs iproute2: {', '.join(missing)} not found"
    return None


def _pick_subnet(pid: int) -> ipaddress.IPv4Network:
    """A 10.a.b.0/24 derived from the pid that overlaps no address or route this machine already has."""
    taken: list[ipaddress.IPv4Network] = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for line in ip(*args).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if any(c.isdigit() for c in word) and ("/" in word or word.count(".") == 3):
                        taken.append(ipaddress.IPv4Network(word, strict=False))
    for step in range(200):
        a, b = 200 + (pid // 256 + step) % 50, pid % 256  # 10.200.0.0 - 10.249.255.255
        net = ipaddress.IPv4Network(f"10.{a}.{b}.0/24")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise NetError("no free 10.x.y.0/24 found")


class NetLab:
    """The namespaces, veths and bridge of one test run; `create()` then, in a finally, `destroy()`."""

    def __init__(self, nodes: int = 3, pid: int | None = None) -> None:
        self.pid = pid or os.getpid()
        self.nodes = nodes
        tag = f"jq{self.pid}"  # at most 2 + 7 + 2 characters: interface names are limited to 15
        self.bridge = f"{tag}br"
        self.namespaces = [f"{tag}n{i + 1}" for i in range(nodes)]
        self.host_links = [f"{tag}h{i + 1}" for i in range(nodes)]  # the bridge's side, in the root namespace
        self.node_links = [f"{tag}p{i + 1}" for i in range(nodes)]  # the node's side, in its namespace
        self.subnet: ipaddress.IPv4Network | None = None
        self.created: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    def gateway_address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def address(self, i: int) -> str:
        """Node i's address (0-based): .11, .12, .13."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 11 + i)

    def exec_prefix(self, i: int) -> list[str]:
        # `ip netns exec` execs the command (no fork), so a Popen's pid is the command's own pid.
        return ["ip", "netns", "exec", self.namespaces[i]]

    def create(self) -> NetLab:
        try:
            self.subnet = _pick_subnet(self.pid)
            prefix = self.subnet.prefixlen
            ip("link", "add", self.bridge, "type", "bridge")
            self.created.append(("link", self.bridge))
            ip("addr", "add", f"{self.gateway_address()}/{prefix}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i, ns in enumerate(self.namespaces):
                ip("netns", "add", ns)
                self.created.append(("netns", ns))
                ip("link", "add", self.host_links[i], "type", "veth", "peer", "name", self.node_links[i])
                self.created.append(("link", self.host_links[i]))
                ip("link", "set", self.node_links[i], "netns", ns)
                ip("link", "set", self.host_links[i], "master", self.bridge)
                ip("link", "set", self.host_links[i], "up")
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "addr", "add", f"{self.address(i)}/{prefix}", "dev", self.node_links[i])
                ip("-n", ns, "link", "set", self.node_links[i], "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> list[str]:
        """Remove everything created, newest first; best effort (returns what could not be removed)."""
        problems = []
        for kind, name in reversed(self.created):
            if kind == "netns":
                res = ip("netns", "del", name, check=False)  # also deletes the veth pair inside it
            else:
                res = ip("link", "del", name, check=False)
                if res.returncode != 0 and "Cannot find device" in res.stderr:
                    continue  # went with its namespace
            if res.returncode != 0:
                problems.append(f"{kind} {name}: {res.stderr.strip()}")
        self.created.clear()
        return problems

    def leftovers(self) -> list[str]:
        """Names of this run still present (for the teardown's assertion)."""
        links = ip("-o", "link", "show").stdout
        spaces = ip("netns", "list").stdout.split()
        names = [self.bridge, *self.host_links, *self.namespaces]
        return [n for n in names if n in spaces or f" {n}:" in links or f" {n}@" in links]

    # faults

    def link_down(self, i: int) -> None:
        """Cut node i off: its veth goes down, so nothing reaches it and nothing leaves it (no RST, no FIN)."""
        ip("link", "set", self.host_links[i], "down")

    def link_up(self, i: int) -> None:
        ip("link", "set", self.host_links[i], "up")

    def impair(self, i: int, qdisc: str) -> None:
        """A root qdisc (e.g. "netem loss 5% delay 50ms") on both ends of node i's link, so both directions are
        impaired (node to node traffic crosses two impaired links, as between two real hosts)."""
        tc("qdisc", "add", "dev", self.host_links[i], "root", *qdisc.split())
        tc("-n", self.namespaces[i], "qdisc", "add", "dev", self.node_links[i], "root", *qdisc.split())

    def qdisc_stats(self) -> tuple[int, int]:
        """(packets sent, packets dropped) by the root qdiscs of every link, both ends."""
        sent = dropped = 0
        for i in range(self.nodes):
            for out in (
                tc("-s", "qdisc", "show", "dev", self.host_links[i]).stdout,
                tc("-n", self.namespaces[i], "-s", "qdisc", "show", "dev", self.node_links[i]).stdout,
            ):
                m = re.search(r"Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out)
                if m:
                    sent, dropped = sent + int(m.group(1)), dropped + int(m.group(2))
        return sent, dropped

    def heal(self) -> None:
        """Every link up, every impairment removed (idempotent)."""
        for i in range(self.nodes):
            ip("link", "set", self.host_links[i], "up", check=False)
            tc("qdisc", "del", "dev", self.host_links[i], "root", check=False)
            tc("-n", self.namespaces[i], "qdisc", "del", "dev", self.node_links[i], "root", check=False)

    def qdisc_unavailable(self, qdisc: str) -> str | None:
        """Why `tc qdisc add ... <qdisc>` fails here (probed on the bridge, then removed), or None."""
        res = tc("qdisc", "add", "dev", self.bridge, "root", *qdisc.split(), check=False)
        if res.returncode != 0:
            kind = qdisc.split()[0]
            return f"tc qdisc {kind} unavailable here (kernel built without it?): {res.stderr.strip()}"
        tc("qdisc", "del", "dev", self.bridge, "root", check=False)
        return None

    # the NATS cluster on it

    def nats_cluster(self, base: Path, jetstream_conf: str = "") -> list[NatsServer]:
        """One nats-server per namespace on its own address, routes to the others; started, not yet waited on.
        `jetstream_conf`: inside each server's jetstream {} block (bench/partitions.py: "sync_interval: always")."""
        servers = []
        for i in range(self.nodes):
            routes = [f"nats-route://{self.address(j)}:{ROUTE_PORT}" for j in range(self.nodes) if j != i]
            servers.append(
                NatsServer(
                    base,
                    name=f"n{i + 1}",
                    host=self.address(i),
                    port=CLIENT_PORT,
                    cluster_port=ROUTE_PORT,
                    monitor_port=MONITOR_PORT,
                    route_urls=routes,
                    command_prefix=self.exec_prefix(i),
                    jetstream_conf=jetstream_conf,
                )
            )
        try:
            for s in servers:
                s.start(wait=False)
        except BaseException:
            for s in servers:
                s.kill()
            raise
        return servers


async def healthy(http: aiohttp.ClientSession, server: NatsServer) -> bool:
    """The node's full /healthz: JetStream on, a meta leader known, and its streams and consumers current."""
    if server.proc is None or server.proc.poll() is not None:
        return False
    try:
        async with http.get(f"{server.monitor_url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def jsz(http: aiohttp.ClientSession, server: NatsServer) -> dict[str, Any]:
    try:
        async with http.get(f"{server.monitor_url}/jsz", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return dict(await r.json()) if r.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


async def wait_all_healthy(servers: list[NatsServer], timeout: float = 60.0) -> float:
    """Wait until every node's /healthz answers 200 and the meta leader sees every node current (else a
    replicated stream may not be placed yet); returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    states = [False] * len(servers)
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(healthy(http, s) for s in servers))
            if all(states) and meta_current(await asyncio.gather(*(jsz(http, s) for s in servers)), len(servers)):
                return time.monotonic() - t0
            for s in servers:
                if s.proc is not None and s.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {s.name} exited: see {s.store / (s.name + '.log')}")
            await asyncio.sleep(0.2)
    names = [s.name for s, ok in zip(servers, states, strict=True) if not ok]
    raise TimeoutError(f"nodes {names} not healthy after {timeout}s")
