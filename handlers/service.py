"""Services, virtual objects and workflows: named groups of handlers.

Decorators only record a handler on its definition object; nothing else
happens at import. The runtime binds definitions when a worker starts.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import cached_property
from typing import Any, ClassVar, Literal, TypeVar

from handlers.retry import RetryPolicy
from handlers.serde import Signature, parameters_of, signature_of

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
ServiceKind = Literal["service", "object", "workflow"]
HandlerKind = Literal["exclusive", "shared", "workflow"]
_REF_ATTR = "__kourier_handler__"
#: How long idempotency keys and workflow runs are remembered, unless a service says.
DEFAULT_IDEMPOTENCY_RETENTION = timedelta(hours=24)
#: A service's or handler's name: a Python identifier in ASCII, of at most 200 characters
#: (what a call record's target takes; a longer or non-ASCII one could not be called).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"{what} name {name!r} must be a Python identifier in ASCII, of at most 200 characters"
        )


def _check_function(path: str, fn: Callable[..., Any]) -> None:
    """A handler is ``async def h(ctx)`` or ``async def h(ctx, input)`` (or wraps one with
    ``functools.wraps``, or is an object with an ``async def __call__``): anything else
    would fail on every attempt (a ``TypeError`` is retried until the invocation pauses),
    and a plain function would repeat its side effects on each."""
    inner = inspect.unwrap(fn)
    if not any(inspect.iscoroutinefunction(f) for f in (fn, inner, type(inner).__call__)):
        raise TypeError(f"handler {path} must be an async function (async def)")
    parameters_of(fn)


def _check_retention(what: str, value: timedelta) -> None:
    if not isinstance(value, timedelta) or value < timedelta(0):
        raise ValueError(f"{what} must be a timedelta of zero or more, not {value!r}")


class HandlerDef:
    """One handler: its function, its kind and options."""

    def __init__(
        self,
        service: ServiceDefinition,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        kind: HandlerKind | None,
        retry: RetryPolicy | None,
    ) -> None:
        self.service = service
        self.name = name
        self.fn = fn
        self.kind = kind
        self._retry = retry

    @property
    def path(self) -> str:
        return f"{self.service.name}/{self.name}"

    @property
    def retry(self) -> RetryPolicy | None:
        """The handler's own policy, else its service's; None when neither has one (the
        worker's default then applies: ``KOURIER_RETRY_*``)."""
        return self._retry or self.service.retry

    @property
    def exclusive(self) -> bool:
        """Runs alone on its key: object handlers by default, and a workflow's ``run``."""
        return self.kind in ("exclusive", "workflow")

    @cached_property
    def signature(self) -> Signature:
        """Read lazily, so annotations may name types defined later in the module."""
        return signature_of(self.fn)

    def __repr__(self) -> str:
        return f"<handler {self.path} ({self.kind or 'service'})>"


class ServiceDefinition:
    """Common ground of :class:`Service`, :class:`VirtualObject` and :class:`Workflow`."""

    kind: ClassVar[ServiceKind]

    def __init__(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        idempotency_retention: timedelta = DEFAULT_IDEMPOTENCY_RETENTION,
        completed_retention: timedelta = timedelta(0),
        inactivity_timeout: timedelta = timedelta(seconds=60),
        description: str = "",
    ) -> None:
        """``idempotency_retention``: how long idempotency keys (and workflow runs) are
        remembered; ``completed_retention``: how long other invocations' outcomes stay
        attachable; ``inactivity_timeout``: how long a waiting handler stays in memory
        before it is suspended."""
        _check_name("service", name)
        _check_retention("idempotency_retention", idempotency_retention)
        _check_retention("completed_retention", completed_retention)
        _check_retention("inactivity_timeout", inactivity_timeout)
        self.name = name
        self.retry = retry  # None: the worker's default (KOURIER_RETRY_*)
        self.idempotency_retention = idempotency_retention
        self.completed_retention = completed_retention
        self.inactivity_timeout = inactivity_timeout
        self.description = description
        self.handlers: dict[str, HandlerDef] = {}

    @property
    def keyed(self) -> bool:
        return self.kind != "service"

    def _register(
        self, name: str | None, kind: HandlerKind | None, retry: RetryPolicy | None
    ) -> Callable[[F], F]:
        def record(fn: F) -> F:
            handler_name = name or getattr(fn, "__name__", None)
            if handler_name is None:  # an object with async __call__ has no name of its own
                raise TypeError(f"{fn!r} has no __name__: name its handler, .handler('name')")
            _check_name("handler", handler_name)
            _check_function(f"{self.name}/{handler_name}", fn)
            if handler_name in self.handlers:
                raise ValueError(f"{self.name} already has a handler named {handler_name!r}")
            main = next((h.name for h in self.handlers.values() if h.kind == "workflow"), None)
            if kind == "workflow" and main is not None:
                # Both would be the one run of a workflow id (its invocation id names no
                # handler): the second would answer with the first one's outcome.
                raise ValueError(f"{self.name} already has its main handler, {main!r}")
            definition = HandlerDef(self, handler_name, fn, kind, retry)
            self.handlers[handler_name] = definition
            setattr(fn, _REF_ATTR, definition)
            return fn

        return record

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name}: {', '.join(self.handlers)}>"


class Service(ServiceDefinition):
    """Stateless handlers; any number run at once, anywhere."""

    kind = "service"

    def handler(
        self, name: str | None = None, *, retry: RetryPolicy | None = None
    ) -> Callable[[F], F]:
        return self._register(name, None, retry)


class VirtualObject(ServiceDefinition):
    """Handlers addressed by key, with durable state per key.

    ``exclusive`` handlers (the default) run one at a time per key, in arrival
    order; ``shared`` handlers run concurrently and may only read state.
    """

    kind = "object"

    def handler(
        self,
        name: str | None = None,
        *,
        kind: Literal["exclusive", "shared"] = "exclusive",
        retry: RetryPolicy | None = None,
    ) -> Callable[[F], F]:
        if kind not in ("exclusive", "shared"):  # a typo ("Shared"), or "workflow"
            raise ValueError(f"an object handler's kind is 'exclusive' or 'shared', not {kind!r}")
        return self._register(name, kind, retry)


class Workflow(ServiceDefinition):
    """A ``run`` handler that executes once per workflow id, plus shared handlers
    that may be called during and after it (within the retention)."""

    kind = "workflow"

    def main(self, name: str = "run", *, retry: RetryPolicy | None = None) -> Callable[[F], F]:
        """The workflow's run, once per workflow id: one per workflow (a second is a
        ``ValueError``)."""
        return self._register(name, "workflow", retry)

    def handler(
        self, name: str | None = None, *, retry: RetryPolicy | None = None
    ) -> Callable[[F], F]:
        return self._register(name, "shared", retry)

    @property
    def run_handler(self) -> HandlerDef | None:
        return next((h for h in self.handlers.values() if h.kind == "workflow"), None)


def handler_of(ref: Callable[..., Any]) -> HandlerDef:
    """The definition behind a decorated handler function."""
    definition = getattr(ref, _REF_ATTR, None)
    if not isinstance(definition, HandlerDef):
        raise TypeError(f"{ref!r} is not a Kourier handler (decorate it with .handler())")
    return definition
