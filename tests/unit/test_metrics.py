"""The worker's lock-free metric families expose what prometheus_client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from streams.metrics import LoopCounter, LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10)
#: Bounds themselves (a value equal to a bound counts in that bucket), values between
#: them, zero, a negative value and one past the last bound.
VALUES = (0.0, -1.0, 0.001, 0.0010001, 0.005, 0.01, 0.1, 0.5, 1, 9.99, 10, 10.5, 3600.0)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The sample lines, without the ``_created`` ones that only the client's own have."""
    lines = generate_latest(registry).decode().splitlines()
    return sorted(line for line in lines if not line.startswith("#") and "_created" not in line)


def test_a_loop_histogram_exposes_the_same_samples_as_the_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("h_seconds", "h", ["service", "handler"], BUCKETS, registry=ours)
    reference = Histogram("h_seconds", "h", ["service", "handler"], buckets=BUCKETS,
                          registry=theirs)  # fmt: skip
    for i, value in enumerate(VALUES):
        labels = ("S", "a" if i % 3 else "b")
        mine.labels(*labels).observe(value)
        reference.labels(*labels).observe(value)
    assert exposition(ours) == exposition(theirs)
    # series a holds -1.0 and 0.001 (equal to the bound) at or below 0.001
    assert 'h_seconds_bucket{handler="a",le="0.001",service="S"} 2.0' in exposition(ours)


def test_a_loop_counter_exposes_the_same_samples_as_the_clients_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("calls", "c", ["outcome"], registry=ours)
    reference = Counter("calls", "c", ["outcome"], registry=theirs)
    for outcome, amount in (("success", 1), ("failure", 1), ("success", 2.5)):
        mine.labels(outcome).inc(amount)
        reference.labels(outcome).inc(amount)
    assert exposition(ours) == exposition(theirs)
    assert 'calls_total{outcome="success"} 3.5' in exposition(ours)


def test_the_type_lines_name_the_families() -> None:
    registry = CollectorRegistry()
    LoopCounter("calls", "c", ["outcome"], registry=registry).labels("ok").inc()
    LoopHistogram("h_seconds", "h", ["service"], BUCKETS, registry=registry)
    text = generate_latest(registry).decode()
    assert "# TYPE calls_total counter" in text
    assert "# TYPE h_seconds histogram" in text


def test_labels_take_one_value_per_label_name() -> None:
    family = LoopHistogram("h_seconds", "h", ["service", "handler"], BUCKETS,
                           registry=CollectorRegistry())  # fmt: skip
    with pytest.raises(ValueError, match="takes labels"):
        family.labels("only-one")
    assert family.labels("S", "a") is family.labels("S", "a")
