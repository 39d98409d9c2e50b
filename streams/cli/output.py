"""What ``kourier`` commands print: JSON for programs, short tables for people.

``--json`` always prints the JSON document. Without it a command prints for a person when
standard output is a terminal, and JSON otherwise, so a pipe or a script that read JSON
before ``--json`` existed still does (as ``gh`` and ``kubectl`` users expect of a CLI
whose output is both read and parsed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

Render = Callable[[Any], str]


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or not sys.stdout.isatty()


def emit(args: argparse.Namespace, data: Any, human: Render | None = None) -> None:
    """``data`` as JSON, or as ``human(data)`` for a person at a terminal."""
    if human is None or wants_json(args):
        print(json.dumps(data, indent=2), flush=True)
    else:  # every string a user chose (a key, an error's message) goes to a terminal
        print(terminal_safe(human(data)), flush=True)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "none") -> str:
    """Rows as left-aligned columns under upper-case headings."""
    if not rows:
        return empty
    cells = [[_cut(_cell(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(_width(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [[c.upper() for c in columns], *cells]
    return "\n".join("  ".join(v + " " * (w - _width(v)) for v, w in zip(line, widths, strict=True)
                               ).rstrip() for line in lines)  # fmt: skip


def _width(text: str) -> int:
    """Columns ``text`` takes at a terminal: two for a wide character (CJK, most emoji),
    none for a combining one."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)  # fmt: skip


#: Characters a value printed as it is could use to move or recolour the terminal, or to
#: show other text than it holds: control characters, C0 and C1 (U+0080-U+009F: json.dumps
#: with ensure_ascii=False leaves those), zero-width ones and bidirectional overrides.
_INVISIBLE = "\u200b\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff"  # not the joiners
_CONTROLS = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
#: The same, but for the line breaks of what a command prints.
_UNSAFE = re.compile(f"[\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
#: Characters a table's cell shows at most: one long key must not push every row's other
#: columns off the screen (``describe`` and ``--json`` show it whole).
MAX_CELL = 64


def _escaped(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _printable(text: str) -> str:
    """``text`` on one line, escaped: for a value a user chose, within a line."""
    return _CONTROLS.sub(_escaped, str(text))


def terminal_safe(text: str) -> str:
    """What a command prints for a person, its line breaks kept and nothing else that
    could move or recolour the terminal (the values in it are :func:`_printable` too)."""
    return _UNSAFE.sub(_escaped, text)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return _printable(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


# -- invocations ------------------------------------------------------------------------


def invocations(body: dict[str, Any]) -> str:
    rows = [
        row
        | {"due / error": f"due {row['due_at']}" if row.get("due_at") else row.get("last_error")}
        for row in body.get("invocations", [])
    ]
    text = table(rows, ["id", "target", "status", "attempt", "modified_at", "due / error"],
                 "no invocations match")  # fmt: skip
    return text if body.get("caught_up", True) else text + "\n(the index is still catching up)"


def detail(body: dict[str, Any]) -> str:
    facts = [
        (name, body.get(field))
        for name, field in (
            ("id", "id"), ("target", "target"), ("status", "status"), ("attempt", "attempt"),
            ("created", "created_at"), ("modified", "modified_at"), ("due", "due_at"),
            ("retry at", "retry_at"), ("idempotency key", "idempotency_key"),
            ("last error", "last_error"), ("argument", "argument"), ("outcome", "outcome"),
        )
        if field in body
    ]  # fmt: skip
    lines = [f"{name + ':':<17}{_cell(value)}" for name, value in facts]
    if body.get("waiting_on"):
        lines.append(f"{'waits on:':<17}{'; '.join(map(_printable, body['waiting_on']))}")
    if "tree" in body:
        lines += ["", "calls:", *tree(body)]
    journal = body.get("journal") or []
    none = (
        "not kept (completed before the latest the index keeps)"
        if body.get("journal_dropped")
        else "empty"
    )
    lines += ["", "journal:" if journal else f"journal: {none}"]
    if body.get("journal_omitted"):
        lines.append(f"  ({body['journal_omitted']} earlier entries not shown)")
    for entry in journal:
        what = entry.get("target") or entry.get("name") or entry.get("callee") or ""
        if isinstance(what, dict):
            what = "/".join(str(what[k]) for k in ("service", "key", "handler") if what.get(k))
        state = "failed " + _cell(entry["failure"]) if entry.get("failure") else (
            "done" if entry.get("done") else "waiting")  # fmt: skip
        line = f"  #{entry['index']} {entry['kind']} {_printable(what)} ({state})"
        lines.append(line.replace("  (", " ("))
    return "\n".join(lines)


def tree(body: dict[str, Any]) -> list[str]:
    """The call tree as indented lines: callers (root first), this invocation, callees."""
    found = body["tree"]
    callers = found.get("callers", [])
    lines = [f"{'  ' * depth}{_node(node)}" for depth, node in enumerate(callers)]
    via = callers[-1]["via"] + " " if callers else ""
    lines.append(
        f"{'  ' * len(callers)}{via}{_printable(body['target'])} {body['id']} {body['status']}"
        "  <- this"
    )

    def below(nodes: list[dict[str, Any]], depth: int) -> None:
        for node in nodes:
            lines.append(f"{'  ' * depth}{node['via']} {_node(node)}")
            below(node.get("callees", []), depth + 1)
            if node.get("more"):
                lines.append(f"{'  ' * (depth + 1)}... {node['more']} more")

    below(found.get("callees", []), len(callers) + 1)
    if found.get("truncated"):
        lines.append("(only part of the tree: at most 100 invocations, 5 levels each way)")
    return lines


def _node(node: dict[str, Any]) -> str:
    text = f"{_printable(node.get('target', '?'))} {node['id']} {node['status']}"
    if not node.get("indexed", True):
        text += " (not indexed)"
    if "duration_ms" in node:
        text += f" took {node['duration_ms']} ms"
    if node.get("due_at"):
        text += f" due {node['due_at']}"
    if node.get("failure"):
        text += f" failed {node['failure']['code']} {_printable(node['failure']['message'])}"
    return text


def control(body: dict[str, Any]) -> str:
    if "invocationId" in body:
        return f"{body['action']} {body['invocationId']}: {body['status']}"
    return _error(body)


def bulk(body: dict[str, Any]) -> str:
    """A bulk action's answer: what it chose (a dry run), or what became of each."""
    if "results" not in body and "message" in body:
        return _error(body)
    action, count = body["action"], len(body["ids"])
    results = body.get("results")
    rows = [
        row | ({"result": f"{results[row['id']]['code']} {results[row['id']]['status']}"}
               if results else {})
        for row in body.get("invocations", [])
    ]  # fmt: skip
    columns = ["id", "target", "status"] + (["result"] if results else [])
    if results is None:
        head = f"would {action} {count} invocation{'s' if count != 1 else ''}"
    else:
        head = f"{action}: {body['succeeded']} done, {body['failed']} failed"
    notes = []
    if body.get("truncated"):
        notes.append(f"{body['matched']} match; only the newest {count} are taken (--limit)")
    if body.get("skipped"):
        notes.append(f"{body['skipped']} matching invocations the action does not apply to")
    return "\n".join([head, *(f"({n})" for n in notes), *([table(rows, columns)] if rows else [])])


def _error(body: Any) -> str:
    if isinstance(body, dict) and "message" in body:
        return f"error {body.get('code')}: {_printable(body['message'])}"
    return json.dumps(body)


# -- the rest ---------------------------------------------------------------------------


def services(body: list[dict[str, Any]]) -> str:
    rows = [
        {"name": s["name"], "kind": s["kind"],
         "handlers": ", ".join(f"{h} ({i.get('kind', '?')})" for h, i in s["handlers"].items())}
        for s in body
    ]  # fmt: skip
    return table(rows, ["name", "kind", "handlers"], "no services announced")


def state(body: dict[str, Any]) -> str:
    if not body:
        return "no state"
    return "\n".join(
        f"{_printable(name)} = {_printable(json.dumps(value, ensure_ascii=False))}"
        for name, value in sorted(body.items())
    )


def deadlocks(body: dict[str, Any]) -> str:
    cycles = body.get("deadlocks", [])
    if not cycles:
        return "no deadlocks"
    lines = []
    for cycle in cycles:
        lines.append(f"{cycle['size']} invocations wait in a cycle:")
        lines += [
            f"  {_printable(m['target'])} {m['id']} ({m['status']}) waits for"
            f" {_printable(m['waits_for'])} by {m['how']}"
            for m in cycle["members"]
        ]
    return "\n".join(lines)


def dead_letters(rows: list[dict[str, Any]]) -> str:
    columns = ["dlq_offset", "reason", "topic", "partition", "offset", "at", "answered", "detail"]
    return table(rows, columns, "no dead letters")


def topics(body: dict[str, Any]) -> str:
    columns = ["topic", "partitions", "replication_factor", "min_isr", "min.insync.replicas",
               "cleanup.policy"]  # fmt: skip
    return f"{body['brokers']} brokers\n" + table(body["topics"], columns)


def acls(body: dict[str, Any]) -> str:
    done = "created" if body["applied"] else "needed (--apply creates them)"
    columns = ["principal", "resource", "name", "pattern", "operation"]
    return f"ACLs of namespace {body['namespace']}, {done}:\n" + table(body["acls"], columns)


def one_line(body: Any) -> str:
    """A small document on one line: ``key=value ...``."""
    if isinstance(body, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in body.items())
    return json.dumps(body)
