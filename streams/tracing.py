"""OpenTelemetry traces: one request's path across handlers, partitions and workers.

The W3C trace context (``traceparent``, ``tracestate``) travels in the headers of every
record that starts an invocation: the HTTP ingress continues the caller's, the Python client
and the Faust integration send the current one, a worker sends the span of the call or send
that made the record, and any other producer may set it. The worker keeps it with the
invocation, so every attempt of that invocation, on whichever worker and after however many
restarts, is a span of the same trace; each call, send, sleep and ``ctx.run`` of an attempt
is a child span.

Spans go nowhere unless ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or
``console``); the other ``OTEL_*`` variables (endpoint, headers, service name, sampler)
configure it as for any OpenTelemetry SDK. Without one (and with no other tracer provider
installed), a span with a parent is still started, as the API's no-op span, so that the
context it continues travels on unchanged, and so is one that hides a span its task
inherited; any other span is not started at all (:func:`span`): it would record nothing
and pass nothing on, and it costs several per cent of a small invocation's CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: Kafka record headers that carry the trace context.
TRACE_HEADERS = ("traceparent", "tracestate")

tracer = trace.get_tracer("kourier")

#: W3C trace context, whatever ``OTEL_PROPAGATORS`` says: it is the format of the headers.
W3C = TraceContextTextMapPropagator()


def configure(service_name: str) -> bool:
    """Install an SDK tracer provider that exports as ``OTEL_*`` says; False when tracing
    stays off (no ``OTEL_TRACES_EXPORTER``, or ``none``). ``OTEL_TRACES_EXPORTER`` is a
    comma-separated list of ``otlp`` (OTLP over HTTP) and ``console``."""
    setting = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower()
    names = [name.strip() for name in setting.split(",") if name.strip() not in ("", "none")]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={setting!r}: use otlp, console or none")
    service = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def span(
    name: str,
    *,
    context: Context | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    record_exception: bool = True,
    set_status_on_exception: bool = True,
) -> contextlib.AbstractContextManager[trace.Span]:
    """``tracer.start_as_current_span``, or nothing at all (the invalid span, not made
    current) when nothing would come of it: no tracer provider is installed, ``context``
    names no parent whose context the span would pass on, and there is no current span,
    which it would either continue or hide (an attempt's task inherits the context of
    whatever scheduled it, perhaps another invocation's span)."""
    parent = context is not None and _valid(trace.get_current_span(context))
    if not parent and not _valid(trace.get_current_span()) and not recording():
        return _NO_SPAN
    return tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes,
        record_exception=record_exception, set_status_on_exception=set_status_on_exception,
    )  # fmt: skip


def _valid(span: trace.Span) -> bool:
    return span.get_span_context().is_valid


def recording() -> bool:
    """Whether a tracer provider is installed (:func:`configure`, or the application's)."""
    # Until a provider is installed, get_tracer_provider() looks up
    # OTEL_PYTHON_TRACER_PROVIDER in the environment on every call: 2.4 us, once per
    # attempt. That variable was read when this module made its tracer at import, which
    # installs the provider it names; since then only set_tracer_provider installs one,
    # and it sets the API's module global, read here for nothing.
    installed = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if installed is _UNKNOWN:  # an API without that global
        installed = trace.get_tracer_provider()
    return installed is not None and not isinstance(installed, trace.ProxyTracerProvider)


_UNKNOWN = object()


_NO_SPAN: contextlib.AbstractContextManager[trace.Span] = contextlib.nullcontext(trace.INVALID_SPAN)


def shutdown() -> None:
    """Export what is still buffered (the SDK's provider has ``shutdown``; the API's not)."""
    provider = trace.get_tracer_provider()
    stop = getattr(provider, "shutdown", None)
    if callable(stop):
        stop()


def context_of(carrier: str | None) -> Context:
    """The context a stored ``traceparent`` (optionally ``;``-joined with its tracestate)
    names, as the parent of a new span; without one, an empty context, so that the span
    starts a trace of its own rather than inherit whatever span scheduled its task."""
    if not carrier:
        return Context()
    parent, _, state = carrier.partition(";")
    values = {"traceparent": parent}
    if state:
        values["tracestate"] = state
    return W3C.extract(values)


Headers = Iterable[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]


def from_headers(headers: Headers | None) -> str | None:
    """A record's trace context, as kept with its invocation: ``traceparent[;tracestate]``."""
    if not headers:
        return None
    found: dict[str, str] = {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name in TRACE_HEADERS and value is not None:
            found[name] = value.decode(errors="replace") if isinstance(value, bytes) else value
    return _joined(found)


def current() -> str | None:
    """The current span's context, as kept with an invocation (see :func:`from_headers`)."""
    carrier: dict[str, str] = {}
    W3C.inject(carrier)
    return _joined(carrier)


#: The longest ``traceparent`` and ``tracestate`` kept: W3C asks for 512 characters of a
#: tracestate to be passed on, and propagators ignore a traceparent past that.
MAX_TRACE_HEADER = 512
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[^;]*)?")


def _joined(found: Mapping[str, str]) -> str | None:
    """``traceparent[;tracestate]``; None without a traceparent of W3C's shape (one that
    held a ``;`` was cut there, and its first part taken for a parent), and no tracestate
    past its length (kept with the invocation, written with each of its records)."""
    parent = found.get("traceparent", "").strip()
    if len(parent) > MAX_TRACE_HEADER or not _TRACEPARENT.fullmatch(parent):
        return None
    state = found.get("tracestate")
    return f"{parent};{state}" if state and len(state) <= MAX_TRACE_HEADER else parent


def as_headers(carrier: str | None) -> list[tuple[str, str | bytes | None]] | None:
    """Kafka record headers for a kept context (the reverse of :func:`from_headers`)."""
    if not carrier:
        return None
    parent, _, state = carrier.partition(";")
    headers: list[tuple[str, str | bytes | None]] = [("traceparent", parent)]
    if state:
        headers.append(("tracestate", state))
    return headers
