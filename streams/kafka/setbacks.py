"""How the worker counts its setbacks: spill failures that end it, failed commits that
slow its restores, and invocations that fail for records Kafka refused.

A full disk stays full: a partition's spill (streams/engine/spill.py) that fails
``SPILL_FAILURES`` times within ``SPILL_WINDOW`` seconds ends the worker rather than be
recovered from once more. A record Kafka always refuses fails the commit of every replay
of it. When it is one an invocation wrote (larger than its topic takes), that invocation
fails at its next attempt (streams/kafka/refused.py), and the restore goes ahead at once,
unless it was blamed before since the last commit. Otherwise (an ACL missing on one topic,
a state record too large), from the second failed commit in a row (none committed in
between), the worker pauses before it restores, ``FAILED_PAUSE`` seconds doubling up to
``FAILED_PAUSE_MAX``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from streams.kafka.refused import RecordsRefused, blame
from streams.wire.records import Failure
from streams.wire.topics import Topics

SPILL_FAILURES = 3
SPILL_WINDOW = 300.0
FAILED_PAUSE = 1.0
FAILED_PAUSE_MAX = 30.0


class Setbacks:
    """The worker's recent failures (Kafka thread; ``refused`` is shared with the event
    loop's attempts, which take ids out of it)."""

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self._spill_failures: list[float] = []  # when spills failed, within SPILL_WINDOW
        self.failed_in_a_row = 0  # commits failed with none committed since
        self._committed_at_failure = 0  # commits made before the last failed one
        #: Invocations held to fail for records Kafka refused, shared with the worker's
        #: partitions (``Attempts.refused``), and those blamed since the last commit.
        self.refused: dict[str, tuple[Failure, float]] = {}
        self._blamed: set[str] = set()

    def spill_failed(self) -> int | None:
        """Count a spill failure: how many there were within ``SPILL_WINDOW`` when that
        many end the worker, else None."""
        now = time.monotonic()
        recent = [at for at in self._spill_failures if now - at < SPILL_WINDOW]
        self._spill_failures = [*recent, now]
        return len(self._spill_failures) if len(self._spill_failures) >= SPILL_FAILURES else None

    def commit_failed(self, commits: int, failure: Exception) -> float:
        """Count a failed commit, ``commits`` having succeeded so far: the seconds to pause
        before restoring (none for the first in a row, nor when invocations fail for the
        records Kafka refused)."""
        again = commits == self._committed_at_failure and self.failed_in_a_row
        self.failed_in_a_row = self.failed_in_a_row + 1 if again else 1
        self._committed_at_failure = commits
        if not again:
            self._blamed.clear()
        if isinstance(failure, RecordsRefused):
            blamed = set(blame(failure, self._topics, self.refused))
            fresh, self._blamed = blamed - self._blamed, self._blamed | blamed
            if fresh:  # they fail in the replay: no pause (blamed again, one is due)
                return 0.0
        if self.failed_in_a_row == 1:
            return 0.0
        return min(FAILED_PAUSE_MAX, FAILED_PAUSE * 2.0 ** (self.failed_in_a_row - 2))


def pause_unless(stopped: Callable[[], bool], seconds: float) -> None:
    """Sleep ``seconds``, or until ``stopped()``."""
    deadline = time.monotonic() + seconds
    while not stopped() and time.monotonic() < deadline:
        time.sleep(max(0.0, min(0.1, deadline - time.monotonic())))
