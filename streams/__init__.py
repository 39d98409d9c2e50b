"""Kourier's runtime on Apache Kafka: records, topics, broker tooling, worker, ingress, client."""

from streams.client import Client
from streams.records import Target
from streams.settings import Settings
from streams.topics import Topics

__all__ = ["Client", "Settings", "Target", "Topics"]
