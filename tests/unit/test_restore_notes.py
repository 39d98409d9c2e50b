"""What a waiting restore reports: a transaction open below the end it reads to, and
nothing while it merely has records left to read (with a stand-in admin client that
answers the last stable offset; the waiting itself is tested on a real broker in
tests/integration/test_restore.py)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import IsolationLevel, TopicPartition

from streams.kafka.restore import _note_open

STATE = "ns.state"


class Answer:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Admin:
    """Answers ``list_offsets`` with ``stable``, asked read committed: the last stable
    offset; ``None`` leaves the request unanswered."""

    def __init__(self, stable: int | None) -> None:
        self.stable = stable

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        assert options["isolation_level"] == IsolationLevel.READ_COMMITTED
        futures: dict[TopicPartition, Future[Answer]] = {}
        for tp in wanted:
            futures[tp] = Future()
            if self.stable is not None:
                futures[tp].set_result(Answer(self.stable))
        return futures


def notes(
    caplog: pytest.LogCaptureFixture, stable: int | None, position: int, end: int
) -> list[str]:
    caplog.clear()
    behind = [TopicPartition(STATE, 0, position)]
    with caplog.at_level(logging.WARNING, logger="kourier.restore"):
        _note_open(Admin(stable), behind, {(STATE, 0): end})  # type: ignore[arg-type]
    return [record.getMessage() for record in caplog.records]


def test_a_reader_held_at_an_open_transaction_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert notes(caplog, stable=40, position=40, end=50) == [
        "restoring ns.state [0] waits for a transaction open at offset 40 to end"
    ]
    assert notes(caplog, stable=0, position=-1001, end=50), "nothing read: held at offset 0"


def test_no_report_when_no_transaction_is_open_below_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow reader that has not fetched yet, with every transaction ended: the last
    stable offset is the end, and nothing waits for a transaction."""
    assert notes(caplog, stable=50, position=-1001, end=50) == []
    assert notes(caplog, stable=50, position=20, end=50) == []


def test_no_report_while_records_before_the_open_transaction_are_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert notes(caplog, stable=40, position=10, end=50) == []


def test_a_leader_that_does_not_answer_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert notes(caplog, stable=None, position=40, end=50) == []
