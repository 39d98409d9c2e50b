"""What the CLI prints at a terminal (``streams.cli.output``), without a server."""

from __future__ import annotations

from streams.cli import output


def test_state_and_cells_print_non_ascii_as_it_is() -> None:
    """Printed through ``json.dumps``, "Zoë" came out as "Zo\\u00eb" at a terminal."""
    assert output.state({"name": "Zoë", "tags": ["café"]}) == 'name = "Zoë"\ntags = ["café"]'
    assert output.one_line({"greeting": {"to": "Zoë"}}) == 'greeting={"to": "Zoë"}'
    # Control characters stay escaped: a value cannot move the terminal's cursor.
    assert output.state({"bell": "\x1b[2J"}) == 'bell = "\\u001b[2J"'
