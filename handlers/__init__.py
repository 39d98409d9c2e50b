"""Kourier's handler SDK: services, virtual objects, workflows and their contexts.

Pure Python: it never imports Kafka. The runtime lives in ``streams``.
"""

from handlers.combinators import gather, select
from handlers.context import (
    Callee,
    CallFuture,
    Context,
    DurableFuture,
    DurablePromise,
    ObjectContext,
    ObjectSharedContext,
    Recipient,
    Request,
    SendHandle,
    WorkflowContext,
    WorkflowSharedContext,
)
from handlers.exceptions import NonDeterminismError, TerminalError
from handlers.retry import RetryPolicy
from handlers.service import HandlerDef, Service, ServiceDefinition, VirtualObject, Workflow

__all__ = [
    # definitions
    "HandlerDef",
    "Service",
    "ServiceDefinition",
    "VirtualObject",
    "Workflow",
    # contexts
    "Context",
    "ObjectContext",
    "ObjectSharedContext",
    "WorkflowContext",
    "WorkflowSharedContext",
    "Request",
    # durable values
    "CallFuture",
    "Callee",
    "DurableFuture",
    "DurablePromise",
    "Recipient",
    "SendHandle",
    "gather",
    "select",
    # errors and policies
    "NonDeterminismError",
    "RetryPolicy",
    "TerminalError",
]
