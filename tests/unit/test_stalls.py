"""When a partition counts as stalled: its last stable offset below its high watermark,
unmoved for the whole of ``stall_after``; or its leader silent as long."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from streams.kafka import stalls
from streams.kafka.stalls import MIN_EVERY, REPORT_EVERY, StallWatch, forget
from streams.metrics import STALLED

TP = ("u.ingress", 3)
OTHER = ("u.delay", 3)


@pytest.fixture(autouse=True)
def fresh_gauge() -> Iterator[None]:
    """Each test starts with no series and no watch holding one."""
    yield
    stalls._holders.clear()
    STALLED.clear()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(tp: tuple[str, int] = TP) -> float | None:
    return REGISTRY.get_sample_value(
        "kourier_partition_stalled_seconds", {"topic": tp[0], "partition": str(tp[1])}
    )


def look(watch: StallWatch, stable: int, high: int) -> tuple[list[object], list[object]]:
    warn, ended = watch.update({TP}, {TP: (stable, high)})
    return list(warn), list(ended)


def test_a_stable_offset_that_moves_at_every_look_is_never_reported() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    for n in range(100):  # transactions commit one after the other, each holding readers
        assert look(watch, 10 * n, 10 * n + 5) == ([], [])
        clock.now += 10
    assert gauge() == 0.0


def test_a_partition_read_to_its_end_is_never_reported() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    for _ in range(20):
        assert look(watch, 7, 7) == ([], [])
        clock.now += 10


def test_a_stable_offset_held_below_the_high_watermark_is_reported_after_stall_after() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    assert look(watch, 7, 9) == ([], [])
    clock.now += 59
    assert look(watch, 7, 12) == ([], [])  # new records above it do not move it
    assert gauge() == 59.0
    clock.now += 1
    warn, ended = watch.update({TP}, {TP: (7, 12)})
    assert [(s.topic, s.partition, s.stable, s.high, s.seconds) for s in warn] == [
        (*TP, 7, 12, 60.0)
    ]
    assert ended == []
    clock.now += REPORT_EVERY - 1
    assert look(watch, 7, 12) == ([], [])  # not every look repeats it
    clock.now += 1
    assert [s.seconds for s in watch.update({TP}, {TP: (7, 12)})[0]] == [60.0 + REPORT_EVERY]
    clock.now += 5
    warn, ended = watch.update({TP}, {TP: (13, 13)})
    assert warn == []
    assert [(s.stable, s.seconds) for s in ended] == [(7, 65.0 + REPORT_EVERY)]
    assert gauge() == 0.0


def test_a_stable_offset_that_moved_starts_a_new_wait() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    look(watch, 7, 9)
    clock.now += 50
    assert look(watch, 8, 9) == ([], [])  # moved, not reported: nothing ended
    clock.now += 50
    assert look(watch, 8, 9) == ([], [])
    assert gauge() == 50.0


def test_a_partition_that_does_not_answer_keeps_its_wait_and_is_reported_when_silent() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    look(watch, 7, 9)
    clock.now += 30
    assert watch.silent({TP}, set()) == []
    assert watch.update({TP}, {}) == ([], [])
    assert gauge() == 30.0  # still waiting, as far as anyone knows
    clock.now += 60
    assert [(s.topic, s.partition, s.seconds) for s in watch.silent({TP}, set())] == [(*TP, 60.0)]
    clock.now += 10
    assert watch.silent({TP}, set()) == []  # once a minute
    assert [s.seconds for s in watch.update({TP}, {TP: (7, 9)})[0]] == [100.0]
    assert watch.silent({TP}, {TP}) == []
    clock.now += 60
    assert watch.silent({TP}, set()) == []  # answered since: a new silence starts


def test_a_silence_counts_only_looks_in_a_row() -> None:
    """A partition out of the owned set for a look (restored after a failed commit) kept the
    start of its silence from before: one miss after it was reported at once, as the whole
    time since, though it may have answered meanwhile."""
    clock = Clock()
    watch = StallWatch(60, clock)
    assert watch.silent({TP}, set()) == []
    clock.now += 50
    assert watch.silent(set(), set()) == []  # not owned for that look: not asked
    clock.now += 20
    assert watch.silent({TP}, set()) == []  # a new silence, not one of 70 s
    clock.now += 60
    assert [s.seconds for s in watch.silent({TP}, set())] == [60.0]


def test_a_partition_given_up_loses_its_gauge_and_its_wait() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    watch.update({TP, OTHER}, {TP: (7, 9), OTHER: (0, 0)})
    clock.now += 60
    watch.update({TP, OTHER}, {TP: (7, 9), OTHER: (0, 0)})  # reported
    gone = watch.keep_only({OTHER})
    assert [(s.topic, s.partition, s.stable, s.seconds) for s in gone] == [(*TP, 7, 60.0)]
    assert gauge() is None
    assert gauge(OTHER) == 0.0
    clock.now += 100
    assert look(watch, 7, 9) == ([], [])  # owned again: the wait starts anew
    assert watch.keep_only(()) == []  # not reported since it came back
    assert gauge() is None
    assert gauge(OTHER) is None


def test_a_short_stall_after_is_looked_for_more_often() -> None:
    assert StallWatch(120).every == 10.0
    assert StallWatch(1).every == MIN_EVERY


def test_two_watches_of_one_partition_share_its_gauge_until_the_last_lets_go() -> None:
    first, second = StallWatch(60), StallWatch(60)  # e.g. two clients on one response partition
    first.update({TP}, {TP: (4, 4)})
    second.update({TP}, {TP: (4, 4)})
    first.keep_only(())
    assert gauge() == 0.0
    second.keep_only(())
    assert gauge() is None


def test_a_reported_partition_given_up_says_how_long_it_had_waited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.stalls")
    clock = Clock()
    watch = StallWatch(60, clock)
    look(watch, 7, 9)
    clock.now += 70
    look(watch, 7, 9)
    forget(watch, {OTHER})
    assert [r.getMessage() for r in caplog.records] == [
        "u.ingress/3: no longer read here; its readers had waited at offset 7 for 70 s"
    ]
