"""The ingress's routing by the service catalog (``streams.http.ingress.Ingress.route``),
with a stand-in for the client's catalog; calls over HTTP against a broker are in
tests/integration/test_engine.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiohttp import ClientTimeout
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from streams.client import Client, KafkaUnavailable, ResponseUnreadable, ServiceInfo
from streams.http import ingress as ingress_module
from streams.http import routes
from streams.http.ingress import Ingress
from streams.http.shared import HttpError
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Response, Target
from tests.unit.harness import until

GREETER = ServiceInfo(name="Greeter", kind="service", handlers={"greet": {"kind": "shared"}})


class Catalog:
    """The client's catalog: ``announced`` reaches it only when it is read to its end."""

    def __init__(self, announced: dict[str, ServiceInfo], fails: Exception | None = None) -> None:
        self.services: dict[str, ServiceInfo] = {}
        self.announced = announced
        self.fails = fails
        self.reads = 0
        self.gate = asyncio.Event()

    async def catalog(self, refresh: bool = False) -> dict[str, ServiceInfo]:
        assert refresh
        self.reads += 1
        await self.gate.wait()
        if self.fails is not None:
            raise self.fails
        self.services = {**self.announced, **self.services}
        return self.services


def ingress_with(catalog: Catalog) -> Ingress:
    ingress = Ingress(Settings(namespace="unit"))
    ingress.client = cast(Client, catalog)
    return ingress


async def test_a_service_announced_a_moment_ago_is_routed_after_one_shared_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog as followed did not list it yet: a 404 until the follower caught up.
    Requests that come while a read goes on wait for that one (no pause between reads here,
    so that only the sharing keeps it to one)."""
    monkeypatch.setattr(ingress_module, "CATALOG_REREAD", 0.0)
    catalog = Catalog({"Greeter": GREETER})
    ingress = ingress_with(catalog)
    asked = [asyncio.ensure_future(ingress.route("/Greeter/greet")) for _ in range(3)]
    await until(lambda: catalog.reads == 1)
    catalog.gate.set()
    routes = await asyncio.wait_for(asyncio.gather(*asked), 5)
    assert {r.target.path() for r in routes} == {"Greeter/greet"}
    assert catalog.reads == 1, "requests waiting together share one read"


async def test_an_unknown_service_is_404_after_at_most_one_read_a_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = Catalog({})
    catalog.gate.set()
    ingress = ingress_with(catalog)
    for _ in range(3):
        with pytest.raises(HttpError) as refused:
            await ingress.route("/Nope/x")
        assert refused.value.status == 404
    assert catalog.reads == 1, "each request read the catalog again"
    monkeypatch.setattr(ingress_module, "CATALOG_REREAD", 0.0)
    with pytest.raises(HttpError):
        await ingress.route("/Nope/x")
    assert catalog.reads == 2


@pytest.mark.parametrize("path", ["/", "//"])
async def test_a_path_without_a_service_is_404_without_reading_the_catalog(path: str) -> None:
    """No catalog, however fresh, routes a path that names no service: its 404 read the
    catalog from Kafka again (``GET /`` without a token did so once a second)."""
    catalog = Catalog({"Greeter": GREETER})
    catalog.gate.set()
    with pytest.raises(HttpError) as refused:
        await ingress_with(catalog).route(path)
    assert refused.value.status == 404
    assert catalog.reads == 0


@pytest.mark.parametrize(
    "failure", [KafkaUnavailable("Kafka did not answer"), RuntimeError("an ACL is missing")]
)
async def test_a_read_that_fails_leaves_the_404(failure: Exception) -> None:
    """Any failure: a KafkaException (a missing ACL) escaped as a 500."""
    catalog = Catalog({"Greeter": GREETER}, fails=failure)
    catalog.gate.set()
    with pytest.raises(HttpError) as refused:
        await ingress_with(catalog).route("/Greeter/greet")
    assert refused.value.status == 404


async def test_a_read_that_takes_long_leaves_the_404_and_serves_later_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With Kafka away a read takes its timeouts (40 s): each 404 waited as long."""
    monkeypatch.setattr(ingress_module, "CATALOG_WAIT", 0.05)
    catalog = Catalog({"Greeter": GREETER})
    ingress = ingress_with(catalog)
    with pytest.raises(HttpError) as refused:
        await asyncio.wait_for(ingress.route("/Greeter/greet"), 5)
    assert refused.value.status == 404
    catalog.gate.set()
    assert (await asyncio.wait_for(ingress.route("/Greeter/greet"), 5)).mode == "call"
    assert catalog.reads == 1


@pytest.mark.parametrize(
    ("media_type", "json"),
    [
        ("application/json", True),
        ("text/json", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/jsonx", False),
    ],
)
def test_a_body_is_json_by_its_media_type(media_type: str, json: bool) -> None:
    assert routes.is_json(media_type) is json


class Answers(Catalog):
    """A client that knows Greeter and answers every call by raising ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__({})
        self.services = {"Greeter": GREETER}
        self.error = error

    def invocation_id_for(self, target: Any, idempotency_key: str | None) -> str:
        return ID

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


ID = ids.new_id(None, 1)


def requests_counted(status: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "kourier_ingress_requests_total", {"kind": "call", "status": status}
        )
        or 0.0
    )


async def test_a_call_whose_answer_cannot_be_read_is_a_502_that_names_it() -> None:
    """The 502 had no x-restate-id: the caller could not attach to what ran."""
    ingress = ingress_with(Answers(ResponseUnreadable("the response is not one this reads")))
    async with TestClient(TestServer(ingress.app())) as http:
        reply = await http.post("/Greeter/greet", json="ada")
        assert reply.status == 502
        assert reply.headers.get("x-restate-id") == ID


async def test_an_unforeseen_error_is_a_500_counted_in_the_requests_metric() -> None:
    """It was answered (json_errors) but counted nowhere: 500s never showed in the metric."""
    ingress = ingress_with(Answers(RuntimeError("a defect")))
    before = requests_counted("500")
    async with TestClient(TestServer(ingress.app())) as http:
        reply = await http.post("/Greeter/greet", json="ada")
        assert reply.status == 500
    assert requests_counted("500") == before + 1


COUNTER = ServiceInfo(name="Counter", kind="object", handlers={"add": {"kind": "exclusive"}})


class Takes(Answers):
    """A client that knows Counter and answers every call with the key it was given."""

    def __init__(self) -> None:
        super().__init__(RuntimeError("not raised"))
        self.services = {"Counter": COUNTER}

    async def call(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        return ID, Response(request_id="r", invocation_id=ID, status="success", value=target.key)


@pytest.mark.parametrize("path", ["/Counter/a%0Ab/add", "/restate/call/Counter/a%0Ab/add"])
async def test_a_key_with_a_line_break_is_called(path: str) -> None:
    """aiohttp matches a route against the decoded path, and ``.*`` stops at a newline: a
    key with one was aiohttp's bare 404, never routed nor counted (attach took it)."""
    async with TestClient(TestServer(ingress_with(Takes()).app())) as http:
        reply = await http.post(path, json=1)
        assert reply.status == 200, await reply.text()
        assert await reply.json() == "a\nb"


class Waits(Answers):
    """A client whose calls wait for good."""

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()


async def test_a_call_whose_client_hangs_up_is_counted_as_a_499() -> None:
    """Its handler is cancelled (``handler_cancellation``), which no ``except Exception``
    meets: the calls slow enough for their clients to give up were in neither the request
    count nor the latency histogram."""
    ingress = ingress_with(Waits(RuntimeError("not raised")))
    before = requests_counted("499")
    async with TestClient(TestServer(ingress.app())) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post("/Greeter/greet", json="ada", timeout=ClientTimeout(total=0.2))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while requests_counted("499") == before:
            assert loop.time() < deadline, "the hung-up call was never counted"
            await asyncio.sleep(0.01)
    assert requests_counted("499") == before + 1


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/health", "GET,HEAD"),
        ("OPTIONS", f"/restate/attach/{ID}", "GET,HEAD"),
        ("DELETE", "/Greeter/greet", "POST"),
        ("GET", "/Greeter/greet", "POST"),
        ("POST", f"/restate/attach/{ID}", "GET,HEAD"),  # was a call to a service "restate"
        ("POST", "/health", "GET,HEAD"),
    ],
)
async def test_another_method_on_a_route_is_405_with_the_methods_it_takes(
    method: str, path: str, allow: str
) -> None:
    """With a route for any method on every path, ``/health`` and the attach paths answered
    other methods 404 "unknown service", after waiting for the catalog."""
    ingress = ingress_with(Answers(RuntimeError("not called")))
    before = requests_counted("405"), requests_counted("500")
    async with TestClient(TestServer(ingress.app())) as http:
        reply = await http.request(method, path)
        assert reply.status == 405, await reply.text()
        assert reply.headers["allow"] == allow
        assert reply.headers["cache-control"] == "no-store"  # an error too: as of now
    # A POST is a call's request, counted as one (it was not); other methods are not.
    assert (requests_counted("405"), requests_counted("500")) == (
        before[0] + (method == "POST"), before[1]
    )  # fmt: skip


def test_a_route_names_its_span_without_the_key() -> None:
    """The span was named by the path: one name per object key, and per 404's garbage."""
    assert routes.Route(Target(service="Counter", key="ada", handler="add"), "call"
                                ).template() == "/Counter/{key}/add"  # fmt: skip
    assert routes.Route(Target(service="Counter", key="ada", handler="add"), "send"
                                ).template() == "/Counter/{key}/add/send"  # fmt: skip
    assert routes.Route(Target(service="Greeter", handler="greet"), "call"
                                ).template() == "/Greeter/greet"  # fmt: skip
