"""Log lines that say which invocation they are about.

An attempt runs in a task of its own, and ``attempt_of`` marks that task's context with the
invocation's id (a ``ctx.run`` action on a thread runs in a copy of it). The
:class:`InvocationFilter` puts the id on every record logged there as ``invocation_id``:
Kourier's own lines and the handler's, whatever logger it uses. :func:`configure` sets up a
process (``kourier worker``, ``ingress``, ``dev``) with it, as text or as one JSON object per
line (``KOURIER_LOG_FORMAT=json``) for a log pipeline to index by id. An application that
embeds a ``Worker`` adds the filter to its own handler.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from opentelemetry import trace

#: The invocation whose attempt runs in this context, if any.
INVOCATION: ContextVar[str | None] = ContextVar("kourier_invocation", default=None)
#: What ``KOURIER_LOG_FORMAT`` may say.
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s %(invocation)s%(message)s"


def attempt_of(invocation_id: str) -> None:
    """Mark the running task's context (an attempt's) as that of ``invocation_id``."""
    INVOCATION.set(invocation_id)


class InvocationFilter(logging.Filter):
    """Adds ``invocation_id`` (None outside an attempt) and, for the text format,
    ``invocation`` (``"inv_... "`` or empty) to every record; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        invocation_id = INVOCATION.get()
        record.invocation_id = invocation_id
        record.invocation = "" if invocation_id is None else f"{invocation_id} "
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    invocation's id and, inside a recording span, its trace and span ids."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        invocation_id = getattr(record, "invocation_id", None)
        if invocation_id is not None:
            line["invocation_id"] = invocation_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(verbose: bool = False, form: str = "text") -> None:
    """Log to stderr at INFO (DEBUG when ``verbose``), as ``form`` says (see FORMATS)."""
    if form not in FORMATS:
        raise ValueError(f"KOURIER_LOG_FORMAT={form!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(InvocationFilter())
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
