"""``streams.tracing.span``: no span where nothing would record it, and the trace context a
worker received travels on whether or not spans are recorded."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from streams import tracing

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a process where no tracer provider is installed (another test module may
    have installed one for the whole process)."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    monkeypatch.setattr(tracing, "tracer", trace.NoOpTracer())


def test_without_a_provider_or_a_parent_no_span_starts(no_provider: None) -> None:
    assert not tracing.recording()
    with tracing.span("attempt", context=tracing.context_of(None)) as span:
        assert span is trace.INVALID_SPAN
        assert tracing.current() is None  # nothing to pass on


def test_without_a_provider_the_parent_context_travels_on(no_provider: None) -> None:
    with tracing.span("attempt", context=tracing.context_of(PARENT)):
        assert tracing.current() == PARENT
        with tracing.span("call Meter/add"):  # a child: its parent is the current span
            assert tracing.current() == PARENT


def test_with_a_provider_a_span_starts_without_a_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = TracerProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("kourier"))
    assert tracing.recording()
    with tracing.span("attempt", context=tracing.context_of(None)) as span:
        assert span.is_recording()
        assert tracing.current() is not None  # a trace of its own, passed on
