"""The Python client (``streams.client.client``) and its side of Kafka
(``streams.client.connection``)."""

from streams.client.client import (
    CallResult,
    Client,
    ClientCallee,
    ClientRecipient,
    SendReceipt,
    due_time,
    outcome,
)
from streams.client.connection import (
    ClientClosed,
    KafkaUnavailable,
    ResponseUnreadable,
    ServiceInfo,
)
from streams.kafka.offsets import MissingTopics  # raised by Client.start()

__all__ = [
    # the client and what its calls return
    "Client",
    "ClientCallee",
    "ClientRecipient",
    "CallResult",
    "SendReceipt",
    "ServiceInfo",
    # what its calls raise
    "ClientClosed",
    "KafkaUnavailable",
    "MissingTopics",
    "ResponseUnreadable",
    # helpers the Faust bridge shares
    "due_time",
    "outcome",
]
