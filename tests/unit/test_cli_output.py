"""What the CLI prints at a terminal (``streams.cli.output``), without a server."""

from __future__ import annotations

import argparse

import pytest

from streams.cli import admin, output


def test_state_and_cells_print_non_ascii_as_it_is() -> None:
    """Printed through ``json.dumps``, "Zoë" came out as "Zo\\u00eb" at a terminal."""
    assert output.state({"name": "Zoë", "tags": ["café"]}) == 'name = "Zoë"\ntags = ["café"]'
    assert output.one_line({"greeting": {"to": "Zoë"}}) == 'greeting={"to": "Zoë"}'
    # Control characters stay escaped, C1 ones too (U+009B is a CSI on its own), and in a
    # value printed as it is: a value cannot move the terminal's cursor.
    assert output.state({"bell": "\x1b[2J"}) == 'bell = "\\u001b[2J"'
    assert output.state({"csi": "\x9b2J"}) == 'csi = "\\u009b2J"'
    assert output.one_line({"error": "boom\x9b2J"}) == "error=boom\\u009b2J"


def test_a_journal_the_index_let_go_is_said_to_be_not_kept() -> None:
    described = {"id": "inv_1", "target": "Svc/h", "status": "completed", "journal": []}
    assert "journal: empty" in output.detail(described)
    dropped = output.detail({**described, "journal_dropped": True})
    assert "journal: not kept" in dropped


def test_entries_the_detail_left_out_are_counted() -> None:
    described = {"id": "inv_1", "target": "Svc/h", "status": "running",
                 "journal": [{"index": 7, "kind": "get", "name": "n", "done": True}],
                 "journal_omitted": 7}  # fmt: skip
    assert "(7 earlier entries not shown)" in output.detail(described)


def test_what_a_user_chose_reaches_the_terminal_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``describe`` and ``deadlocks`` printed keys, targets, what an invocation waits on and
    failure messages as they were: an object key holding ``ESC ] 52`` could set the
    terminal's clipboard, a bidirectional override show another id than the one held."""
    evil = "k\x1b]52;c;aGk=\x07\u202eevil"
    described = {
        "id": "inv_1", "target": f"Svc/{evil}/h", "status": "running",
        "waiting_on": [f"call Svc/{evil}/h (entry 0)"],
        "tree": {"callers": [], "truncated": False, "callees": [
            {"via": "call", "id": "inv_2", "target": f"Svc/{evil}/h", "status": "completed",
             "indexed": True, "failure": {"code": 500, "message": f"boom {evil}"}}]},
        "journal": [{"index": 0, "kind": "call", "target": {"service": "Svc", "key": evil,
                                                          "handler": "h"}, "done": False}],
    }  # fmt: skip
    monkeypatch.setattr(output, "wants_json", lambda args: False)
    output.emit(argparse.Namespace(), described, output.detail)
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert "\x07" not in printed
    assert "\u202e" not in printed
    assert "\\u001b]52;c;aGk=\\u0007\\u202eevil" in printed
    assert printed.count("\n") > 5, "line breaks of the output escaped too"


def test_a_long_cell_is_cut_in_a_table_not_in_json() -> None:
    rows = [{"id": "inv_1", "target": "Svc/" + "k" * 500 + "/h", "status": "running"}]
    shown = output.table(rows, ["id", "target", "status"])
    assert max(len(line) for line in shown.splitlines()) < 100
    assert "…" in shown


def test_a_line_break_a_user_chose_forges_no_line_and_joiners_are_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure message or key with a line break printed a line of its own (a fake
    ``status:``); the joiners of emoji and of Indic and Persian text are text, not tricks.
    An error answer printed on stderr was not escaped at all."""
    forged = "x\nstatus:          completed"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    described = {
        "id": "inv_1", "target": f"Svc/{family}/h", "status": "running",
        "waiting_on": [forged],
        "tree": {"callers": [], "truncated": False, "callees": [
            {"via": "call", "id": "inv_2", "target": "Svc/h", "status": "completed",
             "indexed": True, "failure": {"code": 500, "message": forged}}]},
        "journal": [{"index": 0, "kind": "run", "name": forged, "done": True}],
    }  # fmt: skip
    shown = output.terminal_safe(output.detail(described))
    assert "\nstatus:          completed" not in shown
    assert family in shown
    deadlock = {"deadlocks": [{"size": 1, "members": [
        {"target": forged, "id": "inv_1", "status": "running", "waits_for": forged,
         "how": "call"}]}]}  # fmt: skip
    assert "\nstatus:" not in output.deadlocks(deadlock)
    monkeypatch.setattr(output, "wants_json", lambda args: False)
    admin.show(argparse.Namespace(json=False), 500, {"code": 500, "message": "\x1b]52;c;x\x07"},
               output.control)  # fmt: skip
    said = capsys.readouterr().err
    assert said.startswith("kourier: error 500: ")
    assert "\x1b" not in said


def test_a_table_lines_up_wide_characters_by_the_columns_they_take() -> None:
    """Widths counted code points: a key of CJK characters or emoji pushed its row's next
    column right of the others."""
    rows = [{"key": "漢字", "status": "running"}, {"key": "ab", "status": "completed"},
            {"key": "e\u0301", "status": "paused"}]  # fmt: skip
    assert output.table(rows, ["key", "status"]).splitlines() == [
        "KEY   STATUS",
        "漢字  running",
        "ab    completed",
        "e\u0301     paused",
    ]
