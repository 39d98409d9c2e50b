"""``kourier call`` and ``kourier send`` at their edges, without Kafka: a target that is not
one, and a Ctrl-C while the client starts (streams/cli/calls.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("target", ["Order Service/place", "1st/go", "Obj/" + "k" * 4097 + "/go"])
def test_a_target_that_is_no_name_is_one_line(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydantic's ValidationError (a ValueError) was printed whole: four lines, with its
    input and a link, where a bad argument is one line."""
    from streams.cli import parser

    for command in ("call", "send"):
        assert parser.main([command, target, "{}"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err, err
        assert err.startswith(f"kourier: error: target {target!r}: "), err


def test_ctrl_c_while_a_call_starts_ends_it_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's start waits for Kafka on the loop's threads (up to 30 s with no broker):
    a Ctrl-C ended the command with 130, and the interpreter then waited for that thread,
    silent, before the process ended."""
    import asyncio
    import signal
    import threading

    from streams import client as client_module
    from streams.cli import parser

    release = threading.Event()

    class Starting:
        """A client whose start waits on one of the loop's threads, as Kafka's does."""

        def __init__(self, settings: object) -> None:
            pass

        async def __aenter__(self) -> Starting:
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
            return self

        async def __aexit__(self, *exc: object) -> None:
            pass

    main_thread = threading.main_thread().ident
    assert main_thread is not None
    interrupt = threading.Timer(0.3, signal.pthread_kill, (main_thread, signal.SIGINT))
    exits: list[int] = []
    monkeypatch.setattr(client_module, "Client", Starting)
    monkeypatch.setattr("os._exit", exits.append)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt.start()
        assert parser.main(["call", "Relay/echo", "1"]) == 130
        assert exits == [130], "the process waited for the client's start on its thread"
    finally:
        signal.signal(signal.SIGINT, before)
        interrupt.cancel()
        release.set()
