"""OpenTelemetry: one HTTP request, across a handler and the object it calls, is one trace.

The worker runs in this process but shares no context with the ingress: its spans find
their parents only through the trace context in the records' Kafka headers and the
invocations' changelog.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator

import aiohttp
import pytest
from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.partitioning import partition_for

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def in_memory_spans() -> Iterator[None]:
    """The SDK with the in-memory exporter, installed once for this process (OpenTelemetry
    allows one global provider); later tests then record spans too, into memory."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        trace.set_tracer_provider(provider)
    yield
    EXPORTER.clear()


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def spans_of(trace_id: str, names: set[str], seconds: float = 30) -> list[ReadableSpan]:
    """The finished spans of ``trace_id`` once every one of ``names`` is among them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        spans = [
            s
            for s in EXPORTER.get_finished_spans()
            if s.context is not None and f"{s.context.trace_id:032x}" == trace_id
        ]
        missing = names - {s.name for s in spans}
        if not missing:
            return spans
        if loop.time() > deadline:
            raise AssertionError(f"trace {trace_id}: no span {missing}; got {spans_named(spans)}")
        await asyncio.sleep(0.05)


def spans_named(spans: list[ReadableSpan]) -> list[str]:
    return sorted(s.name for s in spans)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans named {name!r} in {spans_named(spans)}"
    return found[0]


def parent_of(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_an_http_call_through_a_handler_and_an_object_is_one_trace(
    worker: Worker, ingress_url: str
) -> None:
    header, trace_id, caller_span = traceparent()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{ingress_url}/Relay/traced", json="tr1", headers={"traceparent": header}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        assert await response.json() == 3  # the send's 1, then the call's 2

    spans = await spans_of(
        trace_id,
        {
            "POST /Relay/traced",
            "Relay/traced",
            "run stamp",
            "sleep",
            "send Tally/add",
            "call Tally/add",
            "Tally/add",
        },
    )
    http_span = one(spans, "POST /Relay/traced")
    assert parent_of(http_span) == int(caller_span, 16)  # continues the caller's trace
    attempt = one(spans, "Relay/traced")
    assert parent_of(attempt) == span_id(http_span)
    assert attempt.attributes is not None
    assert attempt.attributes["kourier.attempt"] == 1
    for name in ("run stamp", "sleep", "send Tally/add", "call Tally/add"):
        assert parent_of(one(spans, name)) == span_id(attempt), name
    slept = one(spans, "sleep").attributes  # named without its duration, which varies
    assert slept is not None
    assert slept["kourier.sleep"] == 0.01
    # Named without the key, which the attributes still hold.
    assert http_span.attributes is not None
    assert http_span.attributes["http.route"] == "/Relay/traced"
    for name in ("send Tally/add", "call Tally/add"):
        made = one(spans, name).attributes
        assert made is not None
        assert made["kourier.target"] == "Tally/tr1/add"
    # Each of the object's two invocations is a child of the operation that made it.
    made_by = {parent_of(s) for s in spans if s.name == "Tally/add"}
    operations = {
        span_id(one(spans, "send Tally/add")),
        span_id(one(spans, "call Tally/add")),
    }
    assert made_by == operations


async def test_a_kafka_producer_sets_the_trace_context_in_record_headers(
    topics: Settings, worker: Worker
) -> None:
    header, trace_id, producer_span = traceparent()
    record = {"v": 1, "kind": "invoke", "target": {"service": "Tally", "key": "tr2",
              "handler": "add"}, "argument": 5, "mode": "send"}  # fmt: skip
    producer = Producer(topics.client_config({}))
    producer.produce(
        f"{topics.namespace}.ingress",
        key=b"tr2",
        value=json.dumps(record).encode(),
        partition=partition_for("tr2", topics.partitions),
        headers=[("traceparent", header)],
    )
    assert await asyncio.to_thread(producer.flush, 30) == 0

    spans = await spans_of(trace_id, {"Tally/add"})
    assert parent_of(one(spans, "Tally/add")) == int(producer_span, 16)
