"""Stream leaders spread over the servers, so a queue's partitions (and its status buckets) are not all led, and
written, by one server.

nats-server elects each replicated stream's leader by itself (RAFT: whichever peer's election timer fires first)
and does not balance leaders across streams; after a server restarts, the leaders it had stay where they moved
(measured on 2.15: docs/partitions.md). `spread` moves a leader with a stream leader step-down that names the
preferred server (`$JS.API.STREAM.LEADER.STEPDOWN.<stream>` with `{"placement": {"preferred": <server>}}`,
nats-server 2.11+: server/jetstream_api.go, getStepDownPreferredPlacement): only a stream whose leader leads more
of the group than a current peer of it does, and only to that peer. Every worker of a queue runs it (at start
and every `queueworker.partitions.CHECK_EVERY` seconds) with the same rule, so they agree on the moves; a move
already made answers "already leader" and is skipped. A move is a leader election: calls published meanwhile
get an answer a moment later, or a 503 that a retry under the same call id makes safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass

from nats.js import JetStreamContext

log = logging.getLogger("jetqueue.leaders")
STEPDOWN_TIMEOUT = 5.0


@dataclass(frozen=True)
class Placement:
    stream: str
    leader: str  # '' while it has none
    peers: tuple[str, ...]  # the servers that could lead it now: the leader and its current, online replicas


async def placement(js: JetStreamContext, streams: list[str]) -> list[Placement]:
    """Where each stream's leader is (a stream that cannot be asked now is left out)."""
    infos = await asyncio.gather(*(js.stream_info(s) for s in streams), return_exceptions=True)
    out = []
    for stream, info in zip(streams, infos, strict=True):
        if isinstance(info, BaseException) or info.cluster is None:
            continue
        leader = info.cluster.leader or ""
        peers = [r.name for r in info.cluster.replicas or [] if r.current and not r.offline and r.name]
        out.append(Placement(stream, leader, tuple(sorted({leader, *peers} - {""}))))
    return out


def moves(found: list[Placement]) -> list[tuple[str, str, str]]:
    """(stream, from, to) for the streams whose leader should move: in order, a stream whose leader leads more of
    these streams than one of its peers would once it moved goes to that peer (the least loaded, then by name)."""
    load = Counter(p.leader for p in found if p.leader)
    out = []
    for p in found:
        if not p.leader or load[p.leader] <= 1:
            continue
        others = [peer for peer in p.peers if peer != p.leader]
        if not others:
            continue
        target = min(others, key=lambda peer: (load[peer], peer))
        if load[target] + 1 < load[p.leader]:
            load[p.leader] -= 1
            load[target] += 1
            out.append((p.stream, p.leader, target))
    return out


async def step_down(js: JetStreamContext, stream: str, preferred: str) -> str | None:
    """Ask the stream's leader to hand over to `preferred`; the server's error, or None when it agreed."""
    request = json.dumps({"placement": {"preferred": preferred}}).encode()
    subject = f"{js._prefix}.STREAM.LEADER.STEPDOWN.{stream}"
    try:
        answer = json.loads((await js._nc.request(subject, request, timeout=STEPDOWN_TIMEOUT)).data)
    except Exception as e:
        return repr(e)
    error = answer.get("error")
    return str(error.get("description", error)) if isinstance(error, dict) else None


async def spread(js: JetStreamContext, streams: list[str]) -> list[tuple[str, str, str]]:
    """Move leaders so that no server leads more of `streams` than it must; returns the moves the servers agreed
    to (logged)."""
    if len(streams) < 2:
        return []
    done = []
    for stream, was, to in moves(await placement(js, streams)):
        error = await step_down(js, stream, to)
        if error is None:
            log.info("stream %s: leader moves from %s to %s (spreading leaders)", stream, was, to)
            done.append((stream, was, to))
        else:
            log.debug("stream %s: leader not moved to %s: %s", stream, to, error)
    return done
