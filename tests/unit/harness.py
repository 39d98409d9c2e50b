"""A partition processor driven directly: records in, records out, no Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from handlers.retry import RetryPolicy
from handlers.service import ServiceDefinition
from streams.engine.local import LocalCompletions
from streams.engine.outbox import Out, origin_of
from streams.engine.partition import PartitionProcessor
from streams.engine.registry import Registry
from streams.wire import ids
from streams.wire.records import (
    Delayed,
    Invoke,
    Target,
    decode_delay,
    decode_response,
    encode,
)
from streams.wire.topics import Topics

TOPICS = Topics("unit")


class Harness:
    """A partition processor whose output is collected; durable timers (delay-topic
    records) are released back to it when due, as the delay processor would.

    With ``loopback``, records it writes to the ingress topic (calls, completions,
    cancels) come back to it too, as they would on a one-partition topic.
    """

    def __init__(
        self,
        services: list[ServiceDefinition],
        partitions: int = 1,
        *,
        loopback: bool = False,
        local: bool = False,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.services = services
        self.retry = retry  # the worker's default policy (KOURIER_RETRY_*)
        self.clock = clock  # the processor's wall clock (a test may hold it still)
        self.local = local  # completions go straight back to the processor, as in a worker
        self.out: list[Out] = []
        self.offset = 0
        # With ``local``: the processor as a worker's partition 0, and its local deliveries.
        self.processors: dict[int, PartitionProcessor] = {}
        self.completions = LocalCompletions(self.processors)
        self.processor = self.make(partitions)
        self.processor.start()
        self.fired: set[int] = set()
        self.loopback = loopback
        self.timers = asyncio.get_running_loop().create_task(self._release())

    async def _release(self) -> None:
        while True:
            await asyncio.sleep(0.002)
            now = datetime.now(UTC)
            for index, out in enumerate(list(self.out)):
                if index in self.fired:
                    continue
                if out.topic == TOPICS.ingress and self.loopback:
                    self.fired.add(index)
                    self.deliver(out)
                if out.topic != TOPICS.delay:
                    continue
                delayed = decode_delay(out.value)
                assert isinstance(delayed, Delayed)
                if delayed.due <= now:
                    self.fired.add(index)
                    self.send(delayed.released())

    def records(self, kind: str) -> list[dict[str, Any]]:
        """Ingress-topic records of ``kind`` written so far, as JSON objects."""
        return [json.loads(o.value or b"{}") for o in of_kind(self.out, kind)]

    def make(self, partitions: int = 1) -> PartitionProcessor:
        deliver = self.completions.deliver if self.local else None
        processor = PartitionProcessor(partition=0, partitions=partitions, topics=TOPICS,
                                       registry=Registry(self.services, self.retry),
                                       emit=self.out.append,
                                       wake=lambda: None, clock=self.clock,
                                       deliver_locally=deliver)  # fmt: skip
        self.processors[0] = processor
        return processor

    def hand_over(self, earlier: list[Out] | None = None) -> PartitionProcessor:
        """Move the partition to a new owner: flush the invocations changelog, close this
        processor, and start a new one restored from what was flushed (output cleared),
        after the ``earlier`` flushes' records when given."""
        flushed = [*(earlier or []), *self.processor.flush()]
        changelog = [o for o in flushed if o.topic == TOPICS.invocations]
        self.processor.close()
        self.out.clear()
        restored = self.make()
        for record in changelog:
            assert record.key is not None
            restored.restore_invocation(record.key, record.value)
        self.processor = restored
        restored.start()
        return restored

    def deliver(self, out: Out) -> None:
        """Apply an ingress record the partition wrote, with what its headers say."""
        self.processor.on_message(out.key, out.value, self.offset, origin=origin_of(out.headers))
        self.offset += 1

    def send(self, record: Any) -> None:
        self.processor.on_message(None, encode(record), self.offset)
        self.offset += 1

    def send_raw(self, record: dict[str, Any]) -> None:
        """A record as JSON, not checked on the way in (as another producer might write it)."""
        self.processor.on_message(None, json.dumps(record).encode(), self.offset)
        self.offset += 1

    def call(self, target: Target, argument: Any = None, request_id: str = "r") -> str:
        inv_id = ids.new_id(target.key, 1)
        self.send(Invoke(target=target, argument=argument, invocation_id=inv_id,
                         request_id=request_id))  # fmt: skip
        return inv_id

    def responses(self) -> dict[str, Any]:
        found = {}
        for out in self.out:
            if out.topic == TOPICS.responses:
                response = decode_response(out.value)
                found[response.request_id] = response
        return found

    def invokes(self) -> list[dict[str, Any]]:
        """Invoke records written to the ingress topic so far, as JSON objects."""
        return self.records("invoke")


def of_kind(out: list[Out], kind: str) -> list[Out]:
    """The ingress-topic records of ``kind`` among ``out``."""
    return [
        o
        for o in out
        if o.topic == TOPICS.ingress and json.loads(o.value or b"{}").get("kind") == kind
    ]


async def until(condition: Any, seconds: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds; fail after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)
