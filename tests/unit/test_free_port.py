"""Free ports for brokers and servers: below the kernel's range for outgoing connections,
never one something listens on, never the same one twice in a process."""

from __future__ import annotations

import socket

import pytest

from streams.kafka import ports as free_ports


def test_ports_lie_below_the_outgoing_range_and_are_distinct() -> None:
    top = free_ports._ephemeral_start()
    ports = [free_ports.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    if top - 1024 >= 1000:  # else there is no room below the range, and the kernel chooses
        assert all(1024 <= port < top for port in ports), (top, sorted(ports))
    for port in ports[:5]:  # and each can be listened on
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_in_use_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_ports.free_port()))
        taken.listen()
        busy = taken.getsockname()[1]
        free_ports._given.discard(busy)  # only the bind may turn it down
        other = free_ports.free_port()
        tries = iter([busy, other])
        monkeypatch.setattr(free_ports.random, "randrange", lambda low, high: next(tries))
        free_ports._given.discard(other)
        assert free_ports.free_port() == other
