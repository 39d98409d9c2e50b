"""How an invocation is retried after a non-terminal exception."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial``, times ``factor`` per attempt, capped at ``max_interval``.

    After ``max_attempts`` failed attempts the invocation is *paused*: kept,
    visible and resumable from the admin API, never dropped. ``None`` retries forever.
    """

    initial: timedelta = timedelta(milliseconds=50)
    factor: float = 2.0
    max_interval: timedelta = timedelta(seconds=60)
    max_attempts: int | None = 20

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0) or not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError("RetryPolicy needs initial > 0 and a finite factor >= 1")
        if self.max_interval <= timedelta(0):
            raise ValueError("RetryPolicy needs max_interval > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")

    def delay(self, attempt: int) -> timedelta:
        """Backoff before attempt ``attempt + 1``, where ``attempt`` (from 1) just failed."""
        cap = self.max_interval.total_seconds()
        try:  # capped before it is a timedelta: retried forever, the growth overflows one
            seconds = min(self.initial.total_seconds() * self.factor ** (attempt - 1), cap)
        except OverflowError:  # the power alone, past a float's range
            seconds = cap
        try:
            return timedelta(seconds=seconds)
        except OverflowError:  # a max_interval near timedelta.max, rounded past it
            return self.max_interval

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts
