"""``streams.tracing.span``: no span where nothing would record it, and the trace context a
worker received travels on whether or not spans are recorded, to that invocation only."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from streams import tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class CountingTracer(trace.NoOpTracer):
    """The API's no-op tracer, counting the spans it starts."""

    def __init__(self) -> None:
        self.started = 0

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        self.started += 1
        return super().start_span(*args, **kwargs)


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> CountingTracer:
    """As in a process where no tracer provider is installed (another test module may
    have installed one for the whole process)."""
    tracer = CountingTracer()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # what set_tracer_provider sets
    monkeypatch.setattr(tracing, "tracer", tracer)
    return tracer


def test_without_a_provider_or_a_parent_no_span_starts(no_provider: CountingTracer) -> None:
    assert not tracing.recording()
    with tracing.span("attempt", context=tracing.context_of(None)) as span:
        assert span is trace.INVALID_SPAN
        assert tracing.current() is None  # nothing to pass on
        with tracing.span("call Meter/add"):
            assert tracing.current() is None
    assert no_provider.started == 0


def test_without_a_provider_the_parent_context_travels_on(no_provider: CountingTracer) -> None:
    with tracing.span("attempt", context=tracing.context_of(PARENT)):
        assert tracing.current() == PARENT
        with tracing.span("call Meter/add"):  # a child: its parent is the current span
            assert tracing.current() == PARENT
    assert no_provider.started == 2


async def test_an_attempt_scheduled_from_a_traced_one_does_not_pass_its_trace_on(
    no_provider: CountingTracer,
) -> None:
    """The next call queued on a key starts from inside the completing attempt's span, and
    its task inherits that context; without a trace of its own it must pass none on."""

    async def untraced_attempt() -> str | None:
        with tracing.span("Meter/add", context=tracing.context_of(None)):
            return tracing.current()

    with tracing.span("Meter/add", context=tracing.context_of(PARENT)):
        scheduled = asyncio.get_running_loop().create_task(untraced_attempt())
    assert await scheduled is None


def test_with_a_provider_a_span_starts_without_a_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("kourier"))
    assert tracing.recording()
    with tracing.span("attempt", context=tracing.context_of(None)) as span:
        assert span.is_recording()
        assert tracing.current() is not None  # a trace of its own, passed on


def test_a_record_keeps_a_trace_context_of_w3c_shape_and_bounded_length() -> None:
    """What a record's headers carried was kept whole with its invocation, and written with
    each of its records: a tracestate of any length (a large argument beside it made the
    invocation's meta too large to write), and a traceparent that held a ``;`` was cut
    there, so a malformed one was taken for a parent, which W3C says to ignore."""
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracing.from_headers([("traceparent", parent.encode())]) == parent
    assert tracing.from_headers({"traceparent": parent, "tracestate": "a=1"}) == f"{parent};a=1"
    long_state = "a=" + "x" * tracing.MAX_TRACE_HEADER
    assert tracing.from_headers({"traceparent": parent, "tracestate": long_state}) == parent
    for malformed in (f"{parent};x", parent + "-" + "x" * 600, "00-nothex", parent.upper(), ""):
        assert tracing.from_headers({"traceparent": malformed, "tracestate": "a=1"}) is None
    assert tracing.from_headers([("tracestate", b"a=1")]) is None
