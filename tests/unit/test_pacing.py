"""When the worker's Kafka thread steps and how long it polls (``streams.kafka.pacing``)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from streams.engine.dues import DueTimes
from streams.kafka.pacing import Pacing


def partition(next_due: float | None) -> Any:
    """A delay or ingress partition as the pacing sees it: its next due time."""
    return SimpleNamespace(next_due=next_due)


def test_a_poll_waits_no_longer_than_the_next_thing_due_on_either_kind_of_partition() -> None:
    now = time.time()
    nothing = Pacing({0: partition(None)}, {0: partition(None)}, lambda: False)
    assert nothing.wait() == 0.01, "with nothing due, the longest wait"
    started = Pacing({0: partition(None)}, {0: partition(None), 1: partition(now + 0.004)},
                     lambda: False)  # fmt: skip
    assert 0 < started.wait() <= 0.004, "an invocation whose Start came early"
    delayed = Pacing({0: partition(now + 0.003)}, {1: partition(now + 0.008)}, lambda: False)
    assert 0 < delayed.wait() <= 0.003, "a delayed message"
    late = Pacing({}, {1: partition(now - 1.0)}, lambda: False)
    assert late.wait() == 0.0, "something overdue: no wait at all"


def test_an_idle_worker_steps_as_soon_as_a_partition_has_something_due() -> None:
    """Idle (no records for a while, a step just run), the Kafka thread steps for a due
    time that has passed, on an ingress partition as on a delay partition, and for
    nothing else until ``IDLE_STEP`` is up."""
    ingress = partition(time.time() + 60)
    delay = partition(None)
    pacing = Pacing({0: delay}, {0: ingress}, lambda: False)
    pacing.stepped_at = time.monotonic()
    assert not pacing.needs_step([], {}), "nothing is due yet"
    ingress.next_due = time.time() - 0.001
    assert pacing.needs_step([], {}), "an invocation that fell due"
    ingress.next_due = None
    pacing.stepped_at = time.monotonic()
    delay.next_due = time.time() - 0.001
    assert pacing.needs_step([], {}), "a delayed message that fell due"


def test_the_earliest_due_time_follows_every_set_and_drop() -> None:
    """``DueTimes``: what a partition's ``next_due`` reads, kept in O(log n) per change."""
    dues = DueTimes()
    assert dues.earliest is None
    dues.set(("a", 1), 3.0)
    dues.set(("b", 2), 1.0)
    dues.set(("c", 3), 1.0)  # the same time twice: the keys are never compared
    assert (dues.earliest, len(dues)) == (1.0, 3)
    dues.drop(("b", 2))
    assert dues.earliest == 1.0, "one is still due then"
    dues.set(("c", 3), 5.0)  # held until another time: its old entry no longer counts
    assert dues.earliest == 3.0
    dues.drop(("a", 1))
    dues.drop(("never", 0))
    assert (dues.earliest, len(dues)) == (5.0, 1)
    dues.drop(("c", 3))
    assert (dues.earliest, len(dues)) == (None, 0)
