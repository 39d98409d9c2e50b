"""When the worker's Kafka thread steps and how long it polls (``streams.kafka.pacing``),
and the due times it reads (``streams.engine.dues``)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams.engine.dues import DueTimes
from streams.kafka import pacing as pacing_module
from streams.kafka.pacing import Pacing
from tests.unit.test_delay import Clock, Log, Rig


def partition(next_due: float | None) -> Any:
    """A delay or ingress partition as the pacing sees it: its next due time (a delay
    partition's ``next_wake``)."""
    return SimpleNamespace(next_due=next_due, next_wake=next_due)


def test_a_poll_waits_no_longer_than_the_next_thing_due_on_either_kind_of_partition() -> None:
    now = time.time()
    nothing = Pacing({0: partition(None)}, {0: partition(None)}, lambda: False)
    assert nothing.wait(60) == 60, "with nothing due, the longest wait"
    started = Pacing({0: partition(None)}, {0: partition(None), 1: partition(now + 30)},
                     lambda: False)  # fmt: skip
    assert 29 < started.wait(60) <= 30, "an invocation whose Start came early"
    delayed = Pacing({0: partition(now + 20)}, {1: partition(now + 40)}, lambda: False)
    assert 19 < delayed.wait(60) <= 20, "a delayed message"
    late = Pacing({}, {1: partition(now - 1.0)}, lambda: False)
    assert late.wait(60) == 0.0, "something overdue: no wait at all"
    soon = Pacing({}, {1: partition(time.time() + 0.0004)}, lambda: False)
    assert soon.wait(60) in (0.0, 0.001), "whole milliseconds, rounded up (or 0 once due)"


def test_an_idle_worker_steps_as_soon_as_a_partition_has_something_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle (no records for a while, a step just run), the Kafka thread steps for a due
    time that has passed, on an ingress partition as on a delay partition, and for
    nothing else."""
    monkeypatch.setattr(pacing_module, "IDLE_STEP", 3600.0)  # no step for the time alone
    ingress = partition(time.time() + 60)
    delay = partition(None)
    pacing = Pacing({0: delay}, {0: ingress}, lambda: False)
    pacing.stepped_at = time.monotonic()
    assert not pacing.needs_step([], {}), "nothing is due yet"
    ingress.next_due = time.time() - 0.001
    assert pacing.needs_step([], {}), "an invocation that fell due"
    ingress.next_due = None
    assert not pacing.needs_step([], {}), "nothing is due any more"
    delay.next_wake = time.time() - 0.001
    assert pacing.needs_step([], {}), "a delayed message that fell due"


async def test_a_read_back_falls_due_by_the_wall_clock_not_the_loops_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition holding only far-off messages waits for its read-back on a loop timer,
    which counts monotonic time: after the wall clock stepped forward (or the machine was
    suspended) the read-back, and every release after it, came that much late. The Kafka
    thread compares the read-back's due time with the wall clock, as it does releases'."""
    monkeypatch.setattr(pacing_module, "IDLE_STEP", 3600.0)  # no step for the time alone
    log = Log()
    clock = Clock(time.time() - 10)  # the processor armed its timers 10 s of wall clock ago
    log.delayed(clock.now + 5)  # beyond the 2 s horizon: an offset, read back 1 s before
    rig = Rig(log, clock, horizon=2, lead=1)
    rig.feed()
    processor = rig.processor
    assert (processor.next_due, processor.next_read_back) == (None, math.floor(clock.now + 5) - 1)
    pacing = Pacing({0: processor}, {}, lambda: False)
    pacing.stepped_at = time.monotonic()
    assert pacing.needs_step([], {}), "the read-back fell due by the wall clock"
    assert pacing.wait(60) == 0.0
    clock.now = time.time()
    rig.tick()  # the step that follows
    assert rig.fetcher.asked, "the step started the read-back"
    processor.close()


def test_the_earliest_due_time_follows_every_set_drop_and_release() -> None:
    """``DueTimes``: what a partition's ``next_due`` reads and a step releases."""
    dues: DueTimes[str] = DueTimes()
    a, b, c = object(), object(), object()  # keys that cannot be ordered
    assert dues.earliest is None
    dues.set(a, 3.0, "a")
    dues.set(b, 1.0, "b")
    dues.set(c, 1.0, "c")  # the same time twice
    assert (dues.earliest, len(dues)) == (1.0, 3)
    dues.drop(b)
    assert dues.earliest == 1.0, "one is still due then"
    dues.set(c, 5.0, "c")  # held until another time: its old entry no longer counts
    assert dues.earliest == 3.0
    dues.drop(object())
    assert dues.pop_due(2.9) == []
    assert (dues.pop_due(3.0), dues.earliest, c in dues) == (["a"], 5.0, True)
    dues.set(a, 4.0, "a again")
    assert dues.pop_due(10.0) == ["a again", "c"], "soonest first"
    assert (dues.earliest, len(dues)) == (None, 0)
    dues.set(a, 1.0, "a")
    dues.clear()
    assert (dues.earliest, len(dues), dues.pop_due(10.0)) == (None, 0, [])
