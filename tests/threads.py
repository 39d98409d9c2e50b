"""Running a blocking call on a thread of its own, to see whether and how it ends."""

from __future__ import annotations

import threading
from collections.abc import Callable


def in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``call()`` on a daemon thread; the list receives what it raised, if anything."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors
