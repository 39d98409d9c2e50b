"""Log lines name the invocation whose attempt logged them (``streams.logs``)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest
from opentelemetry.sdk.trace import TracerProvider

from handlers import Context, RetryPolicy, Service
from streams import logs
from streams.wire.records import Target
from tests.unit.harness import Harness, until

chatty = Service("Chatty", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=2))


@chatty.handler()
async def speak(ctx: Context, fail: bool) -> str:
    logging.getLogger("apps.chatty").warning("speaking")
    await ctx.run("aside", lambda: logging.getLogger("apps.chatty").warning("on a thread"))
    if fail:
        raise RuntimeError("no voice")
    return ctx.invocation_id


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.InvocationFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


async def test_an_attempts_lines_name_its_invocation_and_no_one_elses(kept: Kept) -> None:
    harness = Harness([chatty])
    ok = harness.call(Target(service="Chatty", handler="speak"), False, request_id="ok")
    failing = harness.call(Target(service="Chatty", handler="speak"), True, request_id="no")
    invocations = harness.processor.invocations
    await until(
        lambda: "ok" in harness.responses() and invocations[failing].meta.status == "paused"
    )
    logging.getLogger("apps.chatty").warning("outside")
    by_message: dict[str, set[str | None]] = {}
    for record in kept.records:
        by_message.setdefault(record.getMessage(), set()).add(record.invocation_id)
    assert by_message["speaking"] == {ok, failing}
    assert by_message["on a thread"] == {ok, failing}
    assert by_message["outside"] == {None}
    attempts = [r for r in kept.records if r.name == "kourier.partition"]
    assert attempts, "the engine's own line about the failed attempt"
    assert {r.invocation_id for r in attempts} == {failing}


async def test_a_callback_scheduled_from_an_attempt_names_no_invocation(kept: Kept) -> None:
    """A callback copies the context it was scheduled from: a callee's answer handed to its
    caller's partition with ``call_soon`` logged the callee's id on lines about the caller.
    A task the attempt starts is about the invocation, as is a thread of its ``ctx.run``."""
    notes = logging.getLogger("apps.notes")
    loop = asyncio.get_running_loop()

    async def child() -> None:
        notes.warning("a task")

    async def attempt() -> None:
        loop.call_soon(notes.warning, "a callback")
        await asyncio.to_thread(notes.warning, "a thread")
        await asyncio.create_task(child())

    with TracerProvider().get_tracer("test").start_as_current_span("attempt"):
        await loop.create_task(attempt(), context=logs.attempt_context("inv_1"))
    await asyncio.sleep(0)
    named = {r.getMessage(): r.invocation_id for r in kept.records}
    assert named == {"a callback": None, "a thread": "inv_1", "a task": "inv_1"}
    # Nor the attempt's trace, in JSON: the callback's lines are about someone else.
    traced = {r.getMessage(): "trace_id" in json.loads(logs.JsonFormatter().format(r))
              for r in kept.records}  # fmt: skip
    assert traced == {"a callback": False, "a thread": True, "a task": True}


async def test_a_line_that_cannot_be_formatted_does_not_raise_where_it_was_logged() -> None:
    """The filter formats the message to see whether it names the invocation: a handler's
    ``log.info("%d", "17")`` raised the formatting's TypeError out of the logging call,
    failing the attempt. Logging reports such a line and goes on."""

    record = logging.LogRecord("apps", logging.WARNING, __file__, 1, "order %d", ("17",), None)

    async def attempt() -> bool:
        return logs.InvocationFilter().filter(record)

    loop = asyncio.get_running_loop()
    assert await loop.create_task(attempt(), context=logs.attempt_context("inv_1"))
    assert (record.invocation_id, record.invocation) == ("inv_1", "inv_1 ")


def test_a_json_line_holds_the_invocation_the_trace_and_the_exception() -> None:
    record = logging.LogRecord("apps", logging.ERROR, __file__, 1, "broke %s", ("here",), None)
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    token = logs.INVOCATION.set("inv_1")
    try:
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("attempt") as span:
            logs.InvocationFilter().filter(record)  # as one logging call runs both
            line = json.loads(logs.JsonFormatter().format(record))
            context = span.get_span_context()
    finally:
        logs.INVOCATION.reset(token)
    assert line["message"] == "broke here"
    assert (line["level"], line["logger"], line["invocation_id"]) == ("ERROR", "apps", "inv_1")
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert "ValueError: bad" in line["exception"]
    assert line["time"].endswith("+00:00")


def test_a_log_format_other_than_text_or_json_is_refused() -> None:
    with pytest.raises(ValueError, match="KOURIER_LOG_FORMAT='xml': use text or json"):
        logs.configure(form="xml")


TEXT = """
import asyncio, logging
from streams import logs
logs.configure(form="text")
async def attempt():
    logging.getLogger("apps").warning("inside")
    logging.getLogger("apps").warning("%s said already", "inv_7")
async def main():
    await asyncio.get_running_loop().create_task(attempt(), context=logs.attempt_context("inv_7"))
logging.getLogger("apps").warning("outside")
asyncio.run(main())
"""


def test_the_text_format_puts_the_id_after_the_loggers_name() -> None:
    """As ``kourier worker`` sets it up: a line outside an attempt has no id."""
    done = subprocess.run([sys.executable, "-c", TEXT], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if " apps " in line]
    assert len(lines) == 3, done.stderr
    assert lines[0].endswith(" WARNING apps outside")
    assert lines[1].endswith(" WARNING apps inv_7 inside")
    assert lines[2].endswith(" WARNING apps inv_7 said already"), "the id twice"
