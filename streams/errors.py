"""The runtime's own errors: one base, and whether trying again can help.

Errors a handler raises or meets (``TerminalError`` and the like) belong to ``handlers``;
these are Kourier's: a record that cannot be decoded, a topic of the wrong shape, a broker
that would not start, Kafka away. ``retriable`` says whether the same request, tried again
later, can succeed (Kafka away: yes; bad input or configuration: no). The CLI prints
either as a one-line error instead of a traceback, and exits 1 for a retriable one, 2
for the others.
"""

from __future__ import annotations


class KourierError(Exception):
    """Base of every error the runtime raises on purpose."""

    retriable: bool = False


class ServeError(KourierError, OSError):
    """A server (the ingress, the admin API, a worker's metrics) cannot listen where it was
    told: the port is in use, or the address is not this machine's."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {error.strerror or error}")
