"""The worker's per-partition gauges: consumer lag, inbox depth, pending timers; and
the same partitions described in more detail for a dump (``kill -USR1``).

Refreshed by the Kafka thread about once a second; a partition's gauges are dropped when
the worker gives it up, so that two workers never report one partition.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.engine.delay import DelayProcessor
from streams.engine.partition import PartitionProcessor
from streams.metrics import INBOX, LAG, PENDING_TIMERS
from streams.wire.topics import Topics


def observe(
    consumer: Consumer,
    topics: Topics,
    processors: Mapping[int, PartitionProcessor],
    delays: Mapping[int, DelayProcessor],
) -> None:
    """Refresh the gauges: consumer lag, inbox depth, pending timers (Kafka thread)."""
    owned = [TopicPartition(topics.ingress, p) for p in list(processors)]
    owned += [TopicPartition(topics.delay, p) for p in list(delays)]
    with contextlib.suppress(KafkaException):
        for tp in consumer.position(owned):
            _, high = consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
            if high == 0 or (tp.offset >= 0 and high >= 0):  # an empty partition: 0
                LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - max(tp.offset, 0)))
    for partition, processor in list(processors.items()):
        INBOX.labels(str(partition)).set(processor.locks.waiting())
    for partition, delay in list(delays.items()):
        PENDING_TIMERS.labels(str(partition)).set(delay.pending)


def forget_gauges(tp: TopicPartition) -> None:
    """Drop the per-partition gauges of a partition this worker no longer owns, so that
    two workers never report one partition."""
    with contextlib.suppress(KeyError):
        LAG.remove(tp.topic, str(tp.partition))
    for gauge in (INBOX, PENDING_TIMERS):
        with contextlib.suppress(KeyError):
            gauge.remove(str(tp.partition))


def describe(
    processors: Mapping[int, PartitionProcessor], delays: Mapping[int, DelayProcessor]
) -> dict[str, Any]:
    """Each owned partition's invocations, key locks and timers (on the loop)."""
    ingress = {}
    for partition, processor in sorted(processors.items()):
        table = processor.invocations
        holders = list(processor.locks.holders.items())
        tasks = [inv.task for inv in table.live() if inv.task is not None]
        ingress[partition] = {
            "invocations": len(table),
            "cold": table.cold,
            "running": sum(1 for task in tasks if not task.done()),
            "keys_held": len(holders),
            "queued": processor.locks.waiting(),
            "holders": {f"{obj.service}/{obj.key}": inv_id for obj, inv_id in holders[:10]},
            "closed": processor.closed,
        }
    delay = {
        partition: {
            "pending": d.pending,
            "held": d.held,
            "caught_up": d.caught_up,
            "next_due": d.next_due,
            "commit_offset": d.commit_offset(),
        }
        for partition, d in sorted(delays.items())
    }
    return {"ingress": ingress, "delay": delay}
