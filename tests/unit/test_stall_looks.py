"""The stall watch's requests: partitions that do not answer have their topics' metadata
looked at again in the background, one look at a time (with a stand-in admin client; what
the brokers answer after an election is in the cluster tier)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from streams.kafka import stalls
from streams.kafka.stalls import StallWatch, watch
from streams.metrics import STALLED
from tests.unit.offset_answers import answers

ANSWERS = ("u.ingress", 0)
FENCED = ("u.state", 0)


class StandInAdmin:
    """Answers ``list_offsets`` for the partitions in ``answering`` and refuses the others
    with FENCED_LEADER_EPOCH; a metadata look waits until ``released``."""

    def __init__(self, answering: set[tuple[str, int]]) -> None:
        self.answering = answering
        self.asked = 0
        self.looked: list[str] = []
        self.released = threading.Event()

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        self.asked += 1
        fenced = KafkaError(KafkaError.FENCED_LEADER_EPOCH)
        return answers(
            wanted, lambda tp: 5 if (tp.topic, tp.partition) in self.answering else fenced
        )

    def list_topics(self, topic: str, timeout: float) -> None:
        self.looked.append(topic)
        self.released.wait()  # however long the look was given


async def until(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {within}s"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def watching(admin: StandInAdmin) -> AsyncIterator[None]:
    task = asyncio.create_task(watch(admin, StallWatch(1.0), lambda: [ANSWERS, FENCED]))  # type: ignore[arg-type]
    try:
        yield
    finally:
        admin.released.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stalls._holders.clear()
        STALLED.clear()


async def test_a_refused_partition_has_its_topic_looked_at_again_one_look_at_a_time() -> None:
    admin = StandInAdmin({ANSWERS})
    async with watching(admin):
        await until(lambda: admin.looked != [], "no fresh look at the metadata")
        await until(lambda: admin.asked >= 8, "the watch waited for the look")  # 4 looks
        assert admin.looked == [FENCED[0]], "a second look while the first was in flight"
        admin.released.set()
        await until(lambda: len(admin.looked) >= 2, "no look after the first ended")


async def test_no_look_at_the_metadata_while_every_partition_answers() -> None:
    admin = StandInAdmin({ANSWERS, FENCED})
    async with watching(admin):
        await until(lambda: admin.asked >= 6, "the watch did not look")
        assert admin.looked == []


async def test_a_look_that_gets_no_thread_ends_neither_the_watch_nor_the_next_look(
    monkeypatch: Any,
) -> None:
    """``can't start new thread`` ended the watch, and the worker never said so."""
    admin = StandInAdmin({ANSWERS})
    real = threading.Thread.start
    refused: list[str] = []

    def start(thread: threading.Thread) -> None:
        if thread.name == "kourier-stall-look" and not refused:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")
        real(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    async with watching(admin):
        await until(lambda: admin.looked != [], "no look after the one that got no thread")
    assert refused == ["kourier-stall-look"]
