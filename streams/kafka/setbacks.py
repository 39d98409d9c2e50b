"""How the worker counts its setbacks: spill failures that end it, and failed commits that
slow its restores.

A full disk stays full: a partition's spill (streams/engine/spill.py) that fails
``SPILL_FAILURES`` times within ``SPILL_WINDOW`` seconds ends the worker rather than be
recovered from once more. A record Kafka always refuses (an ACL missing on one topic, a
topic's lowered ``max.message.bytes``) fails the commit of every replay of it: from the
second failed commit in a row (none committed in between), the worker pauses before it
restores, ``FAILED_PAUSE`` seconds doubling up to ``FAILED_PAUSE_MAX``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SPILL_FAILURES = 3
SPILL_WINDOW = 300.0
FAILED_PAUSE = 1.0
FAILED_PAUSE_MAX = 30.0


class Setbacks:
    """The worker's recent failures (Kafka thread)."""

    def __init__(self) -> None:
        self._spill_failures: list[float] = []  # when spills failed, within SPILL_WINDOW
        self.failed_in_a_row = 0  # commits failed with none committed since
        self._committed_at_failure = 0  # commits made before the last failed one

    def spill_failed(self) -> int | None:
        """Count a spill failure: how many there were within ``SPILL_WINDOW`` when that
        many end the worker, else None."""
        now = time.monotonic()
        recent = [at for at in self._spill_failures if now - at < SPILL_WINDOW]
        self._spill_failures = [*recent, now]
        return len(self._spill_failures) if len(self._spill_failures) >= SPILL_FAILURES else None

    def commit_failed(self, commits: int) -> float:
        """Count a failed commit, ``commits`` having succeeded so far: the seconds to pause
        before restoring (none for the first in a row)."""
        again = commits == self._committed_at_failure and self.failed_in_a_row
        self.failed_in_a_row = self.failed_in_a_row + 1 if again else 1
        self._committed_at_failure = commits
        if self.failed_in_a_row == 1:
            return 0.0
        return min(FAILED_PAUSE_MAX, FAILED_PAUSE * 2.0 ** (self.failed_in_a_row - 2))


def pause_unless(stopped: Callable[[], bool], seconds: float) -> None:
    """Sleep ``seconds``, or until ``stopped()``."""
    deadline = time.monotonic() + seconds
    while not stopped() and time.monotonic() < deadline:
        time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
