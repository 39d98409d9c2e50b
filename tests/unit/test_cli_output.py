"""What the CLI prints at a terminal (``streams.cli.output``), without a server."""

from __future__ import annotations

from streams.cli import output


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
