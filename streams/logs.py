"""Log lines that say which invocation they are about.

An attempt runs in a task of its own, made with a context that names the invocation
(:func:`attempt_context`); a task the handler starts inherits it, and a ``ctx.run`` action
on a thread runs in a copy of it. The :class:`InvocationFilter` puts the id on every record
logged there as ``invocation_id``: Kourier's own lines and the handler's, whatever logger it
uses. A callback the loop runs outside any task (``call_soon``, ``call_later``) copies the
context it was scheduled from, too, but serves whatever comes next (a caller's partition
taking a callee's answer): its lines name no invocation. :func:`configure` sets up a
process (``kourier worker``, ``ingress``, ``dev``) with it, as text or as one JSON object per
line (``KOURIER_LOG_FORMAT=json``) for a log pipeline to index by id. An application that
embeds a ``Worker`` adds the filter to its own handler.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

from opentelemetry import trace

#: The invocation whose attempt runs in this context, if any.
INVOCATION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kourier_invocation", default=None
)
#: What ``KOURIER_LOG_FORMAT`` may say.
FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s %(invocation)s%(message)s"


def attempt_context(invocation_id: str) -> contextvars.Context:
    """A copy of the current context that names ``invocation_id``: an attempt's task's."""
    context = contextvars.copy_context()
    context.run(INVOCATION.set, invocation_id)
    return context


def _in_callback() -> bool:
    """Whether this runs in a callback of the loop, outside any task: whatever its context
    says, it serves what comes next (a thread of its own is a ``ctx.run`` action's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return asyncio.current_task() is None


def current() -> str | None:
    """The invocation whose attempt (or a task or thread of it) runs here, if any."""
    invocation_id = INVOCATION.get()
    return None if invocation_id is None or _in_callback() else invocation_id


def _trace_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (one recorded here, or one a caller passed
    on), unless this is a loop's callback, whose context is whoever scheduled it."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid or _in_callback():
        return None
    return format(span.trace_id, "032x"), format(span.span_id, "016x")


class InvocationFilter(logging.Filter):
    """Adds ``invocation_id`` (None outside an attempt), ``trace_ids`` (see
    :func:`_trace_ids`) and, for the text format, ``invocation`` (``"inv_... "``, or empty
    where the message starts with the id already) to every record; drops none."""

    def filter(self, record: logging.LogRecord) -> bool:
        invocation_id = current()
        record.invocation_id = invocation_id
        record.trace_ids = _trace_ids()
        try:
            message = record.getMessage()
        except Exception:  # logging never raises: the handler reports the record it cannot
            message = ""  # format, but a filter's error went up to the line that logged it
        # Kourier's own lines about an invocation start with its id already: not twice.
        named = invocation_id is None or message.startswith(invocation_id)
        record.invocation = "" if named else f"{invocation_id} "
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    invocation's id and, inside a span, its trace and span ids (as the filter found them;
    where no filter ran, as they are now)."""

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
        ids = record.trace_ids if hasattr(record, "trace_ids") else _trace_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (a record from a QueueHandler)
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(verbose: bool = False, form: str = "text") -> None:
    """Log to stderr at INFO (DEBUG when ``verbose``), as ``form`` says (see FORMATS)."""
    if form not in FORMATS:
        raise ValueError(f"KOURIER_LOG_FORMAT={form!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(InvocationFilter())
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(_TEXT))
    # force: a handler something installed before (a sitecustomize) would make it a no-op.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True
    )
