"""A queue's work streams and static consumers, as the worker's settings want them: created if missing, brought
to the settings if present (provision.py), at start and again whenever one is found deleted underneath.

Which partitions a static worker serves by level (`leveled`) is decided here, once per partition (its loops are
made for it): those whose stream has the levels' subjects, because the settings ask for priorities or because an
earlier worker's did (a stream keeps them: calls may still be there). Each level of those gets a consumer of its
own. The order matters: the queue's durable is narrowed to normal calls *before* the levels' subjects are added to
the stream, so no unfiltered consumer ever delivers a high or low call that the level's consumer, once made, would
deliver again (and a work queue refuses consumers whose filters overlap). Function mode serves no level: a stream
holding high or low calls is refused, with the way out; one whose level subjects are empty loses them, so a
publish there fails loudly instead of waiting for ever.
"""

from __future__ import annotations

from dataclasses import replace

from nats.js import JetStreamContext

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.queueworker.partitions import Partitions
from jetqueue.queueworker.pauses import PauseFollower
from jetqueue.settings import WorkerSettings

NORMAL_FIRST = (contract.Priority.NORMAL, contract.Priority.HIGH, contract.Priority.LOW)


class QueueStreams:
    def __init__(self, js: JetStreamContext, s: WorkerSettings, partitions: Partitions, pauses: PauseFollower) -> None:
        self.js = js
        self.s = s
        self.partitions = partitions
        self.pauses = pauses
        self.leveled: set[int] = set()  # partitions served by level (decided at each partition's first provision)
        self._decided: set[int] = set()

    async def provision(self) -> float:
        """The queue's streams (every partition's) and (static mode) their consumers, created if missing. Returns
        the consumers' ack wait."""
        s = self.s
        ack_wait = s.ack_wait
        for partition in list(self.partitions.served):
            ack_wait = await self.provision_partition(partition)
        # The names may be overridden (an adopted OpenFaaS stream); everything else is the contract's.
        dlq = jetstream.dead_letter_stream(s.queue, s.stream_replicas, s.stream_storage)
        await provision.ensure_dlq_stream(self.js, replace(dlq, name=s.dlq_stream))
        return ack_wait

    async def provision_partition(self, partition: int) -> float:
        s, js = self.s, self.js
        stream = self.partitions.stream(partition)
        work = jetstream.work_stream(
            s.queue,
            s.stream_replicas,
            s.stream_storage,
            s.max_queue_length,
            s.max_queue_bytes,
            partition,
            s.partitions,
            s.priorities,
        )
        work = replace(work, name=stream)
        normal = replace(work, subjects=work.subjects[:1])
        subjects = await provision.ensure_stream(js, normal)  # the levels' subjects, if any, after the narrowing
        level_subjects = {contract.queue_subjects(s.queue, partition, level) for level in contract.LEVEL_MARKS}
        # Levels are found by the stream's subjects, or by calls stored on them (a stream taking `>` lists none).
        found = bool(level_subjects & set(subjects))
        if s.mode != "static":
            if found or await level_calls(js, stream, level_subjects):
                await unlevel(js, stream, s, level_subjects)
            return s.ack_wait
        if partition not in self._decided:
            self._decided.add(partition)
            if s.priorities or found or await level_calls(js, stream, level_subjects):
                self.leveled.add(partition)
        levels = NORMAL_FIRST if partition in self.leveled else (None,)
        ack_wait = s.ack_wait
        for level in levels:
            spec = jetstream.static_consumer(s.queue, s.ack_wait, s.max_ack_pending, s.max_waiting, partition, level)
            spec = replace(spec, stream=stream, durable=self.durable(level))
            ack_wait = await provision.ensure_consumer(js, spec, self.pauses.until())
            if level is contract.Priority.NORMAL and s.priorities:
                await provision.ensure_stream(js, work)  # narrowed: now the levels' subjects
        return ack_wait

    def served_by_level(self, partition: int) -> bool:
        """Does this worker take the partition's calls by level (the Mover then keeps a due call's level)?"""
        return partition in self.leveled

    def durable(self, level: contract.Priority | None) -> str:
        """A static consumer's name: the settings' (an adopted stream may name it otherwise) for the whole queue or
        its normal level, the contract's for high and low."""
        if level is None or level is contract.Priority.NORMAL:
            return self.s.durable
        return contract.level_durable_name(self.s.queue, level)


async def level_calls(js: JetStreamContext, stream: str, level_subjects: set[str]) -> int:
    """Calls stored on a partition's high and low subjects (whether or not the stream still lists them)."""
    left = 0
    for subject in level_subjects:
        info = await js.stream_info(stream, subjects_filter=subject)
        left += sum((info.state.subjects or {}).values())
    return left


async def unlevel(js: JetStreamContext, stream: str, s: WorkerSettings, level_subjects: set[str]) -> None:
    """Function mode serves no level. Static workers still there (their consumers exist): refused before anything
    changes, or they would add the subjects again. Otherwise the levels' subjects are dropped first, so no call can
    land there meanwhile, and then a stream still holding high or low calls is refused: static mode must drain them."""
    names = {consumer.name for consumer in await js.consumers_info(stream)}
    static = sorted(names & {s.durable, *(contract.level_durable_name(s.queue, lv) for lv in contract.LEVEL_MARKS)})
    if static:
        raise provision.StreamSetupError(
            f"stream {stream} has the static-mode consumers {', '.join(static)}: stop the static workers, remove "
            f"them (nats consumer rm {stream} <name>) and start function mode again."
        )
    await provision.drop_subjects(js, stream, level_subjects)
    if left := await level_calls(js, stream, level_subjects):
        raise provision.StreamSetupError(
            f"stream {stream} holds {left} call(s) with a priority (X-Priority high or low): function mode does not "
            "take them. Run the queue in static mode (priorities: true) until they are done, then switch."
        )
