"""Whether the worker's consumer is a member of its group, and a warning while it is not.

A consumer joins its group in librdkafka's own thread; until the group coordinator takes it
in, no partition reaches the worker, and nothing else says so. The worker asks once a second
(``Consumer.memberid()``, no request to Kafka) and warns while it has been out of the group
longer than ``after`` seconds: since it subscribed, or since it was last seen a member.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException

log = logging.getLogger("kourier.worker")


class _Member(Protocol):
    def memberid(self) -> str | None: ...


class Membership:
    """Watches one subscribed consumer of ``group`` (Kafka thread)."""

    def __init__(self, group: str, after: float = 30.0) -> None:
        self.group = group
        self.after = after
        self._in_since = time.monotonic()  # subscribed, or last seen a member
        self._said = 0.0

    def check(self, consumer: _Member, now: float | None = None) -> bool:
        """Whether ``consumer`` is a member; warns (every ``after`` seconds at most) while it
        has not been one for longer than ``after``."""
        now = time.monotonic() if now is None else now
        if consumer.memberid():
            self._in_since = now
            return True
        out_for = now - self._in_since
        if out_for > self.after and now - self._said > self.after:
            self._said = now
            log.warning(
                "not a member of group %s for %.0fs: no partition reaches this worker until "
                "the group coordinator takes it in (is the coordinator's broker up?)",
                self.group,
                out_for,
            )
        return False


def still_member(consumer: _Member, member: str | None, why: str) -> None:
    """Raise ``UNKNOWN_MEMBER_ID`` unless ``consumer`` is the group's member ``member`` still
    (Kafka thread): it had none, or it left the group and perhaps joined again since, and
    the partitions it took over as ``member`` are another worker's."""
    if not member or consumer.memberid() != member:
        raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID, why))
