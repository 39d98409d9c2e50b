"""When the worker's Kafka thread hands the event loop a step, and how long it polls.

While records keep coming, a step follows every poll: sequential calls were 0.5-1 ms
slower when the loop slept between them (measured with ``tests/bench/hops.py``). Once no
record has come for ``IDLE_AFTER`` seconds, a step runs only for records, delay partitions
catching up, effects to commit or something due, and at least every ``IDLE_STEP``
seconds, so that nothing waits longer than that; an idle worker otherwise leaves its
event loop alone.

Something due is a delayed message (its delay partition releases it in a step), a
read-back of far-off delayed messages (the step starts it: ``DelayProcessor.next_wake``),
or a scheduled invocation whose ``Start`` came a little early and which its partition runs
when it falls due (``PartitionProcessor.next_due``). A poll never waits past any of them,
and the step right after it handles them, so that the message, or the invocation's first
effects, go into the very next transaction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from confluent_kafka import Message

from streams.engine.delay import DelayProcessor
from streams.engine.partition import PartitionProcessor

#: Seconds between steps on the event loop when the Kafka thread has nothing for it.
IDLE_STEP = 0.1
#: Seconds without records after which the Kafka thread counts as idle.
IDLE_AFTER = 1.0


class Pacing:
    """The Kafka thread's rhythm: whether to step now, how long to poll (Kafka thread)."""

    def __init__(
        self,
        delays: Mapping[int, DelayProcessor],
        processors: Mapping[int, PartitionProcessor],
        dirty: Callable[[], bool],
    ) -> None:
        # The owned delay and ingress partitions (the worker's dicts, never replaced).
        self._delays = delays
        self._processors = processors
        self._dirty = dirty  # whether handlers have produced effects not yet submitted
        # When the Kafka thread last ran a step on the loop: written by the Kafka thread
        # only, read by Worker.status() on the loop as well.
        self.stepped_at = 0.0
        self._busy_until = 0.0  # until when it steps after every poll (records came)

    def needs_step(self, batch: list[Message], positions: dict[int, int]) -> bool:
        """Whether to run a step on the loop for this poll's ``batch`` and the
        ``positions`` of delay partitions still catching up."""
        now = time.monotonic()
        if batch:
            self._busy_until = now + IDLE_AFTER
        busy = now < self._busy_until or now >= self.stepped_at + IDLE_STEP
        if batch or positions or self._dirty() or busy:
            self.stepped_at = now
            return True
        soonest = self._soonest()
        due = soonest is not None and soonest <= time.time()
        if due:
            self.stepped_at = now
        return due

    def poll_timeout(self, committer_idle: bool) -> float:
        """Commit promptly when handlers have produced effects and the committer is free;
        while a transaction is in flight, new effects wait for it anyway; with nothing to
        commit, wait for input."""
        if not self._dirty():
            return self.wait()
        return 0.0 if committer_idle else 0.001

    def wait(self, longest: float = 0.01) -> float:
        """How long to wait for input: not past the next thing due."""
        soonest = self._soonest()
        if soonest is None:
            return longest
        remaining = soonest - time.time()
        if remaining <= 0:
            return 0.0
        # In whole milliseconds, rounded up: librdkafka truncates a poll's timeout to them,
        # and a wait cut to 0 would spin through the last millisecond.
        return min(longest, math.ceil(remaining * 1000) / 1000)

    def _soonest(self) -> float | None:
        """The earliest wall-clock time at which a partition has something due. The loop
        changes the due times meanwhile (the dicts change only while the Kafka thread waits
        for the loop): each is read once, as it is then."""
        dues = [d.next_wake for d in list(self._delays.values())]
        dues += [p.next_due for p in list(self._processors.values())]
        return min((due for due in dues if due is not None), default=None)
