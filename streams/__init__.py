"""Kourier's runtime on Apache Kafka: records, topics, broker tooling, worker, ingress, client."""

from streams.client import Client
from streams.settings import Settings
from streams.wire.records import Target
from streams.wire.topics import Topics

__all__ = ["Client", "Settings", "Target", "Topics"]
