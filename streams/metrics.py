"""Prometheus metrics of workers and the admin server (the ingress has its own in ingress.py).

Every worker process exposes them with ``kourier worker --metrics-port``; names start with
``kourier_``. ``deploy/grafana/kourier.json`` charts them.
"""

from __future__ import annotations

from typing import TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_M = TypeVar("_M", bound=MetricWrapperBase)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

INVOCATIONS = Counter(
    "kourier_invocations_total",
    "Completed invocations by target and outcome (success, failure, cancelled, killed)",
    ["service", "handler", "outcome"],
)
INVOCATION_SECONDS = Histogram(
    "kourier_invocation_seconds",
    "From an invocation's arrival on its partition to its completion (end to end)",
    ["service", "handler"],
    buckets=_SECONDS,
)
ATTEMPT_SECONDS = Histogram(
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
