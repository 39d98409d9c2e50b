"""The paths the admin commands ask for and what they say when the admin API does not
answer, against a stand-in on loopback (streams/cli/admin.py; bulk actions and output in
tests/unit/test_cli_admin.py, the real admin API in tests/integration/test_admin.py); and
``kourier dev`` refusing a bad setting before it starts a broker."""

from __future__ import annotations

import json
import logging
import signal
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest

from streams.cli import admin, parser
from streams.kafka import broker
from tests.unit.stand_in import serving


def answer(handler: BaseHTTPRequestHandler, content_type: str, body: bytes) -> None:
    """Answer 200 with ``body``, as a web server does."""
    handler.send_response(200)
    handler.send_header("content-type", content_type)
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class Recorder(BaseHTTPRequestHandler):
    """Answers every GET with one object's state, and keeps the paths asked for."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Recorder.paths.append(self.path)
        body = json.dumps({"service": "Tally", "key": "a/b", "state": {}}).encode()
        answer(self, "application/json", body)

    def log_message(self, format: str, *args: object) -> None: ...


@pytest.fixture
def recording() -> Iterator[str]:
    Recorder.paths.clear()
    with serving(Recorder) as url:
        yield url


@pytest.mark.parametrize(
    ("key", "query"), [("a/b", "a%2Fb"), ("..", ".."), ("", ""), ("a b&c", "a+b%26c")]
)
def test_state_get_asks_for_any_key_by_query(recording: str, key: str, query: str) -> None:
    """``quote`` keeps "/" by default: key ``a/b`` asked for ``/state/Tally/a/b``, a 404;
    no path segment holds ``..`` (resolved away) or the empty key."""
    code = parser.main(["state", "get", "Tally", key, "--admin-url", recording, "--json"])
    assert code == 0
    assert Recorder.paths == [f"/state/Tally?key={query}"]


def test_an_admin_api_that_does_not_answer_is_one_line_that_says_to_try_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A read past the timeout raised a bare ``TimeoutError``: a traceback. It may answer
    later, so it is exit 1 with "try again", as for Kafka that does not answer."""
    with socket.socket() as silent:  # accepts (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/services"
        with pytest.raises(admin.Unanswered, match=r"no answer from .* within 0 s"):
            admin.http("GET", url, timeout=0.2)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        code = parser.main(["services", "--admin-url", f"http://127.0.0.1:{port}"])
    assert code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kourier: error: cannot reach"), line
    assert line.endswith("(is `kourier ingress` up?); try again"), line


class CutShort(BaseHTTPRequestHandler):
    """A 503 whose body stops after 10 of the 100 bytes it announced (a server going away)."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "100")
        self.end_headers()
        self.wfile.write(b'{"code": 5')
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None: ...


def test_an_error_answer_cut_short_is_one_line_that_says_to_try_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The body of an error answer was read outside the handling of a cut connection:
    ``IncompleteRead`` was a traceback."""
    with serving(CutShort) as url:
        code = parser.main(["services", "--admin-url", url])
    assert code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kourier: error: no answer from"), line
    assert line.endswith("try again"), line


class NotKourier(BaseHTTPRequestHandler):
    """Some other web server: a page of HTML."""

    def do_GET(self) -> None:
        answer(self, "text/html", b"<html><body>hello</body></html>")

    def log_message(self, format: str, *args: object) -> None: ...


def test_an_admin_url_that_is_not_kourier_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """The error said ``Expecting value: line 1 column 1 (char 0)`` and nothing else."""
    with serving(NotKourier) as url:
        code = parser.main(["services", "--admin-url", url])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{url}/services answered 200 with something that is not JSON" in line, line


def test_kourier_dev_refuses_a_bad_setting_before_it_starts_a_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The settings were read after the local broker had started, outside what stops it:
    a bad value exited 2 and left the broker running."""
    started: list[Path] = []
    monkeypatch.setattr(broker, "start", lambda data, port=None: started.append(data))
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)
    monkeypatch.setenv("KOURIER_CALL_TIMEOUT", "5x")
    monkeypatch.delenv("KOURIER_BOOTSTRAP_SERVERS", raising=False)
    ended = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(sig) for sig in ended]
    code = parser.main(["dev", "examples.quickstart", "--data", str(tmp_path)])
    assert code == 2
    assert started == [], "a broker was started for settings that are refused"
    assert "kourier: error:" in capsys.readouterr().err
    # Its own handlers (for its clean-up) are gone once it returns: a process that runs it
    # (these tests) is interrupted as before.
    assert [signal.getsignal(sig) for sig in ended] == before
