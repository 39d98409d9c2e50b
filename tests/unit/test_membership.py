"""The worker's warning while its consumer is out of its group (streams/kafka/membership.py)."""

from __future__ import annotations

import logging
import time

import pytest

from streams.kafka.membership import Membership


class Consumer:
    def __init__(self) -> None:
        self.member: str | None = None

    def memberid(self) -> str | None:
        return self.member


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return found


def test_a_consumer_never_taken_in_is_reported_every_so_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = Consumer()
    watch = Membership("shop.workers", after=30.0)
    start = time.monotonic()
    assert not watch.check(consumer, start + 10)
    assert warnings(caplog) == []
    assert not watch.check(consumer, start + 31)
    [said] = warnings(caplog)
    assert said.startswith("not a member of group shop.workers for 31s")
    watch.check(consumer, start + 45)
    assert warnings(caplog) == [], "said again before another 30 s"
    watch.check(consumer, start + 62)
    assert len(warnings(caplog)) == 1


def test_the_wait_counts_from_when_it_was_last_a_member(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer()
    watch = Membership("shop.workers", after=30.0)
    start = time.monotonic()
    consumer.member = "rdkafka-1"
    assert watch.check(consumer, start + 100)
    consumer.member = ""  # out of the group again, rejoining
    watch.check(consumer, start + 120)
    assert warnings(caplog) == []
    watch.check(consumer, start + 131)
    [said] = warnings(caplog)
    assert "for 31s" in said
