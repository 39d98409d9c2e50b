"""Free loopback ports, for local brokers, the processes ``kourier dev`` starts and tests:
below the range the kernel draws outgoing connections' ports from, and never the same one
twice in a process."""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Ports this process has handed out, never handed out twice.
_given: set[int] = set()


def reserve(ports: list[int]) -> None:
    """Never hand out ``ports`` (given elsewhere, as a cluster's listener ports are)."""
    _given.update(port for port in ports if port)


def _ephemeral_start() -> int:
    """The first port the kernel gives outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, below the range the kernel draws
    outgoing connections' ports from: a broker restarted on its old port, or a server that
    binds a moment after this returns, cannot find it taken by some client's connection.
    Never the same port twice in this process; another process that picks ports this way
    may draw it before either binds (as with any check of a free port), one time in
    thousands for a handful of ports."""
    top = _ephemeral_start()
    low = max(1024, top - 12_000)
    for _ in range(200 if top - low >= 1000 else 0):
        port = random.randrange(low, top)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    while True:  # no room below the range: let the kernel choose
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
        if chosen not in _given:
            _given.add(chosen)
            return chosen


def port_in_use(port: int) -> bool:
    """Whether something on 127.0.0.1 accepts connections on ``port``."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
