"""What a worker hosts (``kourier worker MODULE[:ATTR]``) and how tracing is switched on
(the standard ``OTEL_*`` variables, off by default): DESIGN §6 and §8."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from streams.engine.registry import RegistryError, load_services


def test_a_module_gives_every_definition_in_it_and_module_attr_those_it_names() -> None:
    every = {s.name for s in load_services("examples.quickstart")}
    assert {"Greeter", "Counter", "Bank"} <= every
    assert [s.name for s in load_services("examples.quickstart:greeter")] == ["Greeter"]
    listed = load_services("tests.integration.apps:SERVICES")
    assert [s.name for s in listed][:2] == ["Tally", "Relay"]
    with pytest.raises(RegistryError, match="has no attribute 'nothing'"):
        load_services("examples.quickstart:nothing")
    with pytest.raises(RegistryError, match="defines no Service"):
        load_services("json")
    with pytest.raises(RegistryError, match="cannot import"):
        load_services("no_such_module_here")


SPAN = """
from streams import tracing
print(tracing.configure("kourier-worker"))
with tracing.span("outer"):
    pass
from opentelemetry import trace
provider = trace.get_tracer_provider()
getattr(provider, "force_flush", lambda: None)()
"""


def traced(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", SPAN], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_tracing_is_off_unless_an_exporter_is_named() -> None:
    for env in ({}, {"OTEL_TRACES_EXPORTER": "none"},
                {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}):  # fmt: skip
        done = traced(**env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["False"], env


def test_the_console_exporter_writes_spans_named_by_otel_service_name() -> None:
    done = traced(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="orders-worker")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True\n")
    exported = json.loads(done.stdout[len("True\n") :])
    assert exported["name"] == "outer"
    assert exported["resource"]["attributes"]["service.name"] == "orders-worker"


def test_an_unknown_exporter_is_refused_by_name() -> None:
    done = traced(OTEL_TRACES_EXPORTER="zipkin")
    assert done.returncode != 0
    assert "OTEL_TRACES_EXPORTER='zipkin': use otlp, console or none" in done.stderr
