"""How the demo ends when a signal ends it (``examples/demo.py``), without starting it."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from examples import demo


@pytest.fixture
def kept_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in demo.ENDING}
    try:
        yield
    finally:
        for ending, handler in saved.items():
            signal.signal(ending, handler)
        demo.ENDED_BY.clear()


def test_a_signal_whose_exit_a_c_extension_replaced_still_ends_with_its_code(
    kept_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGTERM that landed inside ``AdminClient(config)`` reached the demo as confluent-
    kafka's ``TypeError``: the demo ended with 1 and a traceback, not 143."""

    def interrupted() -> int:
        try:
            demo._end(signal.SIGTERM, None)
        except SystemExit:
            raise TypeError("expected configuration property name as type unicode string") from None
        return 0

    monkeypatch.setattr(demo, "main", interrupted)
    assert demo.run() == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "a second one is ignored"


def test_an_error_with_no_signal_behind_it_is_raised(
    kept_handlers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> int:
        raise TypeError("a real one")

    monkeypatch.setattr(demo, "main", broken)
    with pytest.raises(TypeError, match="a real one"):
        demo.run()
