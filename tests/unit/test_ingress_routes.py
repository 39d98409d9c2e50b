"""The ingress's routing by the service catalog (``streams.http.ingress.Ingress.route``),
with a stand-in for the client's catalog; calls over HTTP against a broker are in
tests/integration/test_engine.py."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest

from streams.client import Client, KafkaUnavailable, ServiceInfo
from streams.http import ingress as ingress_module
from streams.http.ingress import Ingress
from streams.http.shared import HttpError
from streams.settings import Settings

GREETER = ServiceInfo(name="Greeter", kind="service", handlers={"greet": {"kind": "shared"}})


class Catalog:
    """The client's catalog: ``announced`` reaches it only when it is read to its end."""

    def __init__(self, announced: dict[str, ServiceInfo], fails: bool = False) -> None:
        self.services: dict[str, ServiceInfo] = {}
        self.announced = announced
        self.fails = fails
        self.reads = 0
        self.gate = asyncio.Event()

    async def catalog(self, refresh: bool = False) -> dict[str, ServiceInfo]:
        assert refresh
        self.reads += 1
        await self.gate.wait()
        if self.fails:
            raise KafkaUnavailable("Kafka did not answer")
        self.services = {**self.announced, **self.services}
        return self.services


def ingress_with(catalog: Catalog) -> Ingress:
    ingress = Ingress(Settings(namespace="unit"))
    ingress.client = cast(Client, catalog)
    return ingress


async def test_a_service_announced_a_moment_ago_is_routed_after_one_read() -> None:
    """The catalog as followed did not list it yet: a 404 until the follower caught up."""
    catalog = Catalog({"Greeter": GREETER})
    ingress = ingress_with(catalog)
    asked = [asyncio.ensure_future(ingress.route("/Greeter/greet")) for _ in range(3)]
    await asyncio.sleep(0)
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


async def test_a_read_that_fails_leaves_the_404() -> None:
    catalog = Catalog({"Greeter": GREETER}, fails=True)
    catalog.gate.set()
    with pytest.raises(HttpError) as refused:
        await ingress_with(catalog).route("/Greeter/greet")
    assert refused.value.status == 404


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
    assert ingress_module._is_json(media_type) is json
