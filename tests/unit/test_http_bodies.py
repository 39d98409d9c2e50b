"""What the HTTP ingress checks in a body before any record is made of it."""

from __future__ import annotations

from streams.http.ingress import MAX_NESTING, nesting


def test_nesting_counts_arrays_and_objects_but_not_brackets_in_strings() -> None:
    assert nesting(b"1") == 0
    assert nesting(b'{"a": [1, {"b": []}]}') == 4
    assert nesting(b'["[[[[", "{{{{"]') == 1
    assert nesting(b'["a \\"[[[[ quoted", [2]]') == 2, "an escaped quote does not end a string"
    deep = b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1)
    assert nesting(deep) == MAX_NESTING + 1
    flat = b"[" + b"[1]," * 500 + b"[2]]"
    assert nesting(flat) == 2, "many brackets, little depth"
