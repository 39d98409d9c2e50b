"""The client's service catalog against the real broker."""

from __future__ import annotations

import json

from confluent_kafka import Producer

from streams.client import Client
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Target
from streams.wire.topics import Topics


async def test_a_service_announced_after_the_client_started_is_found_when_asked_for(
    topics: Settings,
) -> None:
    """A workflow send names the workflow's run only if the client knows the target is a
    workflow: a client asked about a service it does not know yet reads the catalog to its
    end instead of waiting for its follower."""
    async with Client(topics) as client:
        assert "Late" not in client.services
        manifest = {"name": "Late", "kind": "workflow", "handlers": {"run": {"kind": "workflow"}}}
        producer = Producer(topics.producer_config({}))
        producer.produce(Topics(topics.namespace).services, json.dumps(manifest).encode(), b"Late")
        producer.flush(10)
        services = await client.catalog(refresh=True)
        assert services["Late"].kind == "workflow"
        assert client.invocation_id_for(Target(service="Late", key="w", handler="run"), None) == (
            ids.workflow_run_id("Late", "w")
        )
