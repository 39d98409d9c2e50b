"""``kourier invocations cancel|kill ...`` by id or by filter, and what the CLI prints:
checked against a stand-in admin API (a local HTTP server, no broker)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import pytest

from streams.cli import output
from streams.cli.admin import bulk_filter
from streams.cli.parser import build_parser
from tests.unit.stand_in import serving

IDS = ["inv_1", "inv_2"]


def parse(*argv: str) -> Any:
    return build_parser().parse_args(list(argv))


def test_a_control_verb_takes_an_id_or_filters_never_both_nor_neither() -> None:
    assert bulk_filter(parse("invocations", "cancel", "inv_1")) is None
    chosen = parse("invocations", "kill", "--service", "Trip", "--status", "running", "--dry-run")
    assert bulk_filter(chosen) == {"service": "Trip", "status": "running"}
    assert chosen.dry_run
    assert not chosen.yes
    assert chosen.limit == 1000
    with pytest.raises(ValueError, match="not both"):
        bulk_filter(parse("invocations", "cancel", "inv_1", "--key", "k"))
    with pytest.raises(ValueError, match="needs an invocation id, or filters"):
        bulk_filter(parse("invocations", "purge"))
    with pytest.raises(ValueError, match="--dry-run goes with filters"):
        bulk_filter(parse("invocations", "resume", "inv_1", "--dry-run"))
    with pytest.raises(SystemExit):
        parse("invocations", "cancel", "--status", "runing")  # argparse: not a status


def test_every_data_command_takes_json() -> None:
    for argv in (
        ["invocations", "list"], ["invocations", "describe", "inv_1"], ["invocations", "deadlocks"],
        ["invocations", "cancel", "--service", "S"], ["invocations", "attach", "inv_1"],
        ["services"], ["state", "get", "Counter", "ada"], ["dlq", "list"], ["dlq", "replay"],
        ["call", "Greeter/greet", '"Ada"'], ["send", "Greeter/greet"], ["topics", "describe"],
        ["topics", "create"], ["broker", "status"], ["broker", "start"],
    ):  # fmt: skip
        assert parse(*argv, "--json").json is True, argv
    called = parse("call", "Greeter/greet", '"Ada"', "--json")
    assert called.argument == '"Ada"', "the argument and the flag do not meet"
    assert parse("send", "Greeter/greet", "1").json is False


class Admin(BaseHTTPRequestHandler):
    """Answers ``POST /invocations/{action}`` like the admin API, and records each request."""

    requests: ClassVar[list[tuple[str, str, Any]]] = []
    tokens: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        """``/restate/attach/<id>``: the outcome of inv_1, 404 for any other."""
        self.requests.append(("GET", self.path, None))
        found = self.path == "/restate/attach/inv_1"
        answer: Any = {"total": 3} if found else {"code": 404, "message": "unknown inv_9"}
        data = json.dumps(answer).encode()
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append(("POST", self.path, body))
        self.tokens.append(self.headers.get("authorization"))
        dry = "dry_run=true" in self.path
        answer: dict[str, Any] = {
            "action": "cancel", "dry_run": dry, "filter": {"service": "Trip"}, "matched": 2,
            "skipped": 0, "ids": IDS, "truncated": False,
            "invocations": [{"id": i, "target": "T/a/h", "status": "running"} for i in IDS],
        }  # fmt: skip
        if not dry:
            answer |= {"results": {i: {"code": 202, "status": "accepted"} for i in IDS},
                       "succeeded": 2, "failed": 0}  # fmt: skip
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def admin_url() -> Iterator[str]:
    Admin.requests.clear()
    Admin.tokens.clear()
    with serving(Admin) as url:
        yield url


def kourier(admin_url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *argv, "--admin-url", admin_url],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_bulk_dry_run_lists_and_does_nothing(admin_url: str) -> None:
    done = kourier(admin_url, "invocations", "cancel", "--service", "Trip", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ids"] == IDS, "piped: JSON"
    assert [(m, p) for m, p, _ in Admin.requests] == [
        ("POST", "/invocations/cancel?service=Trip&limit=1000&dry_run=true")
    ]


def test_a_bulk_action_without_a_terminal_needs_yes(admin_url: str) -> None:
    done = kourier(admin_url, "invocations", "cancel", "--service", "Trip")
    assert done.returncode == 2
    assert "2 invocations match; pass --yes" in done.stderr
    assert len(Admin.requests) == 1, "only the dry run"


def test_a_bulk_action_acts_on_what_its_dry_run_listed(admin_url: str) -> None:
    done = kourier(admin_url, "invocations", "cancel", "--service", "Trip", "--yes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["succeeded"] == 2
    _, (_, path, body) = Admin.requests
    assert path == "/invocations/cancel?service=Trip&limit=1000"
    assert body == {"ids": IDS}, "exactly the listed ones"


def test_a_person_reads_tables_and_trees() -> None:
    listing = {
        "invocations": [
            {"id": "inv_1", "target": "Trip/a/reserve", "status": "scheduled", "attempt": 1,
             "modified_at": "2025-01-01T00:00:00.000Z", "due_at": "2025-01-01T00:10:00.000Z"},
        ],
        "caught_up": True,
    }  # fmt: skip
    lines = output.invocations(listing).splitlines()
    assert lines[0].split() == [
        "ID",
        "TARGET",
        "STATUS",
        "ATTEMPT",
        "MODIFIED_AT",
        "DUE",
        "/",
        "ERROR",
    ]
    assert "due 2025-01-01T00:10:00.000Z" in lines[1]
    described = {
        "id": "inv_2", "target": "Trip/a/plan", "status": "suspended", "journal": [],
        "tree": {
            "callers": [{"id": "inv_0", "target": "Relay/go", "status": "suspended",
                         "via": "call", "entry": 0}],
            "callees": [{"id": "inv_3", "target": "Trip/a-hotel/reserve", "status": "completed",
                         "via": "call", "entry": 0, "duration_ms": 12, "callees": [],
                         "failure": {"code": 409, "message": "cancelled"}}],
            "truncated": False,
        },
    }  # fmt: skip
    text = output.detail(described)
    assert "Relay/go inv_0 suspended" in text
    assert "  call Trip/a/plan inv_2 suspended  <- this" in text
    assert "    call Trip/a-hotel/reserve inv_3 completed took 12 ms failed 409 cancelled" in text
    bulk = {"action": "kill", "ids": ["inv_1"], "matched": 3, "skipped": 1, "truncated": True,
            "invocations": [{"id": "inv_1", "target": "T/h", "status": "running"}]}  # fmt: skip
    summary = output.bulk(bulk).splitlines()
    assert summary[0] == "would kill 1 invocation"
    assert "3 match; only the newest 1 are taken" in summary[1]
    assert output.table([], ["id"], "nothing") == "nothing"


def test_the_cli_sends_the_token_without_the_blanks_around_it(
    admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token from a Secret's file ends with a newline: the CLI put it in the header, which
    ``http.client`` refuses with a ``ValueError`` no handler caught (a traceback)."""
    monkeypatch.setenv("KOURIER_TOKEN", "s3cret\n")
    done = kourier(admin_url, "invocations", "cancel", "--service", "Trip", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert Admin.tokens == ["Bearer s3cret"]


def test_attach_prints_the_outcome_or_says_why_there_is_none(admin_url: str) -> None:
    """``kourier invocations attach ID`` asks the ingress's attach route and waits."""

    def attach(inv_id: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", "invocations", "attach", inv_id,
             "--ingress-url", admin_url],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    done = attach("inv_1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"total": 3}
    assert Admin.requests[-1][:2] == ("GET", "/restate/attach/inv_1")
    missing = attach("inv_9")
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["code"] == 404  # JSON, as stdout is no terminal
