"""A queue's work streams and static consumers, as the worker's settings want them: created if missing, brought
to the settings if present (provision.py), at start and again whenever one is found deleted underneath.

Which partitions take high and low calls (`leveled`) is decided here: those whose stream has the levels' subjects,
because the settings ask for priorities or because an earlier worker's did (a stream keeps them: calls may still be
there). A static worker gives each level of those a consumer of its own, normal's (the queue's durable, narrowed to
normal calls) made first: a work queue refuses a consumer whose filter overlaps another's. Function mode takes no
level: a stream still holding such calls is refused, with the way out.
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
        self.leveled: set[int] = set()  # partitions whose stream takes high and low calls

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
        subjects = await provision.ensure_stream(js, replace(work, name=stream))
        if any(contract.queue_subjects(s.queue, partition, level) in subjects for level in contract.LEVEL_MARKS):
            self.leveled.add(partition)
            if s.mode != "static":
                await refuse_levels(js, stream, s.queue, partition)
        if s.mode != "static":
            return s.ack_wait
        ack_wait = s.ack_wait
        for level in NORMAL_FIRST if partition in self.leveled else (None,):
            spec = jetstream.static_consumer(s.queue, s.ack_wait, s.max_ack_pending, s.max_waiting, partition, level)
            spec = replace(spec, stream=stream, durable=self.durable(level))
            ack_wait = await provision.ensure_consumer(js, spec, self.pauses.until())
        return ack_wait

    def durable(self, level: contract.Priority | None) -> str:
        """A static consumer's name: the settings' (an adopted stream may name it otherwise) for the whole queue or
        its normal level, the contract's for high and low."""
        if level is None or level is contract.Priority.NORMAL:
            return self.s.durable
        return contract.level_durable_name(self.s.queue, level)


async def refuse_levels(js: JetStreamContext, stream: str, queue: str, partition: int) -> None:
    """Function mode serves no level's consumer: a stream still holding high or low calls (of static mode with
    priorities) must be drained by static mode first, or they would wait there for ever."""
    left = 0
    for level in contract.LEVEL_MARKS:
        info = await js.stream_info(stream, subjects_filter=contract.queue_subjects(queue, partition, level))
        left += sum((info.state.subjects or {}).values())
    if left:
        raise provision.StreamSetupError(
            f"stream {stream} holds {left} call(s) with a priority (X-Priority high or low): function mode does not "
            "take them. Run the queue in static mode (priorities: true) until they are done, then switch."
        )
