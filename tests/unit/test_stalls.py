"""When a partition counts as stalled: its last stable offset below its high watermark,
unmoved for the whole of ``stall_after``."""

from __future__ import annotations

from prometheus_client import REGISTRY

from streams.kafka.stalls import REPORT_EVERY, StallWatch

TP = ("u.ingress", 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gauge(tp: tuple[str, int] = TP) -> float | None:
    return REGISTRY.get_sample_value(
        "kourier_partition_stalled_seconds", {"topic": tp[0], "partition": str(tp[1])}
    )


def test_a_stable_offset_that_moves_at_every_look_is_never_reported() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    for look in range(100):  # transactions commit one after the other, each holding readers
        assert watch.update({TP: (10 * look, 10 * look + 5)}) == ([], [])
        clock.now += 10
    assert gauge() == 0.0


def test_a_partition_read_to_its_end_is_never_reported() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    for _ in range(20):
        assert watch.update({TP: (7, 7)}) == ([], [])
        clock.now += 10


def test_a_stable_offset_held_below_the_high_watermark_is_reported_after_stall_after() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    assert watch.update({TP: (7, 9)}) == ([], [])
    clock.now += 59
    assert watch.update({TP: (7, 12)}) == ([], [])  # new records above it do not move it
    assert gauge() == 59.0
    clock.now += 1
    warn, ended = watch.update({TP: (7, 12)})
    assert [(s.topic, s.partition, s.stable, s.high, s.seconds) for s in warn] == [
        (*TP, 7, 12, 60.0)
    ]
    assert ended == []
    clock.now += REPORT_EVERY - 1
    assert watch.update({TP: (7, 12)}) == ([], [])  # not every look repeats it
    clock.now += 1
    assert [s.seconds for s in watch.update({TP: (7, 12)})[0]] == [60.0 + REPORT_EVERY]
    clock.now += 5
    warn, ended = watch.update({TP: (13, 13)})
    assert warn == []
    assert [(s.stable, s.seconds) for s in ended] == [(7, 65.0 + REPORT_EVERY)]
    assert gauge() == 0.0


def test_a_stable_offset_that_moved_starts_a_new_wait() -> None:
    clock = Clock()
    watch = StallWatch(60, clock)
    watch.update({TP: (7, 9)})
    clock.now += 50
    assert watch.update({TP: (8, 9)}) == ([], [])  # moved, not reported: nothing ended
    clock.now += 50
    assert watch.update({TP: (8, 9)}) == ([], [])
    assert gauge() == 50.0


def test_a_partition_given_up_loses_its_gauge_and_its_wait() -> None:
    clock = Clock()
    other = ("u.delay", 3)
    watch = StallWatch(60, clock)
    watch.update({TP: (7, 9), other: (0, 0)})
    watch.keep_only({other})
    assert gauge() is None
    assert gauge(other) == 0.0
    clock.now += 100
    assert watch.update({TP: (7, 9)}) == ([], [])  # owned again: the wait starts anew


def test_a_short_stall_after_is_looked_for_more_often() -> None:
    assert StallWatch(60).every == 10.0
    assert StallWatch(1).every == 0.25
