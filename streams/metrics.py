"""Prometheus metrics of workers and the admin server (the ingress has its own in ingress.py).

Every worker process exposes them with ``kourier worker --metrics-port``; names start with
``kourier_``. ``deploy/grafana/kourier.json`` charts them.

The three series written for every invocation (:data:`INVOCATIONS`,
:data:`INVOCATION_SECONDS`, :data:`ATTEMPT_SECONDS`) are kept by :class:`LoopCounter` and
:class:`LoopHistogram`: plain numbers that only the worker's event loop writes, exposed
through a collector. The client's own metrics take a lock and run their checks on every
update (1.2 µs an increment and 2.3 µs an observation, against 0.14 and 0.34 here): a
Kafka-ingress backlog drain took 128-129 µs of worker CPU per invocation with them, 112-113
with the three updates left out, and 116-118 with these families.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar, cast

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

_M = TypeVar("_M", bound=MetricWrapperBase)
_S = TypeVar("_S")

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class CountSeries:
    """One labelled series of a :class:`LoopCounter`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramSeries:
    """One labelled series of a :class:`LoopHistogram`: a count per bucket (the last is
    +Inf), not yet cumulative, and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: Prometheus buckets count values less than or equal.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


class _LoopFamily(ABC, Generic[_S]):
    """A labelled metric family whose series one thread writes without a lock (the
    worker's event loop: the processors run there, one step at a time). The scrape reads
    them from the exposition thread: the series table is copied in one C call, and a
    histogram's counts in another (its sum may hold one observation more or less, as the
    client's own may)."""

    _kind = "untyped"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], _S] = {}
        registry.register(self)

    def labels(self, *values: str) -> _S:
        series = self._series.get(values)
        if series is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            series = self._series[values] = self._new_series()
        return series

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, self._kind)]

    @abstractmethod
    def _new_series(self) -> _S: ...

    @abstractmethod
    def collect(self) -> Iterator[Metric]:
        """The family with a sample per series, read now."""


class LoopCounter(_LoopFamily[CountSeries]):
    """A counter (``name`` without ``_total``) written by one thread."""

    _kind = "counter"

    def _new_series(self) -> CountSeries:
        return CountSeries()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, series in self._series.copy().items():
            family.add_metric(values, series.value)
        yield family


class LoopHistogram(_LoopFamily[HistogramSeries]):
    """A histogram with fixed ``buckets`` written by one thread."""

    _kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        super().__init__(name, documentation, labelnames, registry)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*map(floatToGoString, self.bounds), "+Inf"]
        for values, series in self._series.copy().items():
            counts, total = list(series.counts), series.sum  # a copy: the loop goes on
            cumulative, buckets = 0, []
            for edge, count in zip(edges, counts, strict=True):
                cumulative += count
                buckets.append((edge, float(cumulative)))
            family.add_metric(values, buckets, total)
        yield family


INVOCATIONS = LoopCounter(
    "kourier_invocations",
    "Completed invocations by target and outcome (success, failure, cancelled, killed)",
    ["service", "handler", "outcome"],
)
INVOCATION_SECONDS = LoopHistogram(
    "kourier_invocation_seconds",
    "From an invocation's arrival on its partition to its completion (end to end)",
    ["service", "handler"],
    buckets=_SECONDS,
)
ATTEMPT_SECONDS = LoopHistogram(
    "kourier_handler_seconds",
    "How long one attempt of a handler ran, until it returned, failed or was suspended",
    ["service", "handler"],
    buckets=_SECONDS,
)
RETRIES = Counter(
    "kourier_retries_total", "Failed attempts that were scheduled to retry", ["service", "handler"]
)
PAUSED = Counter(
    "kourier_paused_total", "Invocations parked as paused after their last attempt", ["service"]
)
DEADLETTERS = Counter(
    "kourier_deadletters_total", "Ingress records sent to the dead-letter topic", ["reason"]
)
CARRIED = Counter(
    "kourier_delay_carried_total",
    "Pending delayed messages written again at their delay partition's end, so that its "
    "committed offset could move on",
)
INBOX = Gauge(
    "kourier_inbox_depth",
    "Invocations queued behind an exclusive call on their key, per ingress partition",
    ["partition"],
)
LAG = Gauge(
    "kourier_consumer_lag",
    "Records not yet consumed by this worker, per owned partition",
    ["topic", "partition"],
)
PENDING_TIMERS = Gauge(
    "kourier_pending_timers",
    "Delayed sends, sleeps and call deadlines waiting on the delay topic, per partition",
    ["partition"],
)
STALLED = Gauge(
    "kourier_partition_stalled_seconds",
    "Seconds the last stable offset of a partition this process reads has stayed below "
    "its high watermark without moving: read_committed readers wait there for an open "
    "transaction",
    ["topic", "partition"],
)
DEADLOCKS = Gauge(
    "kourier_deadlocks", "Wait-for cycles between exclusive invocations, seen by the admin server"
)


_children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}


def labelled(metric: _M, *values: str) -> _M:
    """``metric.labels(*values)``, kept: the client takes a lock and checks the values on
    every ``labels`` call, a sizeable share of a small invocation's cost. The client keeps
    every child it makes too, so this grows no further than it does."""
    key = (metric, values)
    child = _children.get(key)
    if child is None:  # two threads at once: the client hands both the same child
        child = _children[key] = metric.labels(*values)
    return cast(_M, child)
