"""The contexts a handler receives. Abstract: the runtime (``streams``) implements them.

The class chain makes the rules types: a shared handler gets an
:class:`ObjectSharedContext`, which has no ``set``, so writing state from a
shared handler is a type error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

#: A handler function, or a handler name.
HandlerRef = Callable[..., Awaitable[Any]] | str
#: What ``ctx.run`` performs: a coroutine function, or a plain function (run on a thread).
Action = Callable[[], Awaitable[Any]] | Callable[[], Any]


class DurableFuture(ABC, Generic[T]):
    """A journaled result: awaiting it after a crash returns the recorded value."""

    @abstractmethod
    def __await__(self) -> Generator[Any, None, T]: ...


class CallFuture(DurableFuture[T]):
    """The pending result of a request-response call."""

    @abstractmethod
    async def invocation_id(self) -> str:
        """The callee's invocation id."""


class SendHandle(ABC):
    """A one-way message that has been sent (durably, once)."""

    @abstractmethod
    async def invocation_id(self) -> str:
        """The invocation id the message got."""


class Callee(ABC):
    """A handler to call and wait for: ``await ctx.service("Svc", "h").request(arg)``."""

    @abstractmethod
    def request(
        self,
        arg: Any = None,
        *,
        timeout: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> CallFuture[Any]:
        """Call and return the result; the callee's ``TerminalError`` is raised here.

        With ``timeout``, a ``TerminalError`` (408) is raised when it passes and
        the callee is cancelled.
        """


class Recipient(ABC):
    """A handler to send a one-way message to: ``ctx.service_send("Svc", "h").send(arg)``."""

    @abstractmethod
    def send(
        self,
        arg: Any = None,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SendHandle:
        """Send; with ``delay`` the message runs no earlier than ``delay`` from now."""


@dataclass(frozen=True)
class Request:
    """What the invocation was asked: its id, the caller's headers, the attempt number."""

    id: str
    headers: Mapping[str, str] = field(default_factory=dict)
    attempt: int = 1


class Context(ABC):
    """What every handler can do. Every operation is durable: journaled, replayed."""

    @property
    @abstractmethod
    def invocation_id(self) -> str: ...

    @abstractmethod
    def request(self) -> Request: ...

    @abstractmethod
    def service(self, service: HandlerRef, handler: str | None = None) -> Callee:
        """A service handler, by names or by reference (``ctx.service(greet)``)."""

    @abstractmethod
    def object(self, obj: HandlerRef, key: str, handler: str | None = None) -> Callee:
        """A virtual object's handler for ``key``."""

    @abstractmethod
    def workflow(
        self, workflow: HandlerRef, workflow_id: str, handler: str | None = None
    ) -> Callee:
        """A workflow's handler for ``workflow_id``."""

    @abstractmethod
    def service_send(self, service: HandlerRef, handler: str | None = None) -> Recipient: ...

    @abstractmethod
    def object_send(self, obj: HandlerRef, key: str, handler: str | None = None) -> Recipient: ...

    @abstractmethod
    def workflow_send(
        self, workflow: HandlerRef, workflow_id: str, handler: str | None = None
    ) -> Recipient: ...

    @abstractmethod
    def attach_invocation(self, invocation_id: str) -> DurableFuture[Any]:
        """Wait for another invocation and return its result (where it is retained)."""

    @abstractmethod
    def cancel_invocation(self, invocation_id: str) -> None:
        """Cancel another invocation (it sees a 409 ``TerminalError``)."""

    @abstractmethod
    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        """A durable timer: it survives crashes and costs nothing while it waits."""

    @overload
    def run(self, name: str, action: Action, *, type_hint: None = None) -> DurableFuture[Any]: ...

    @overload
    def run(self, name: str, action: Action, *, type_hint: type[T]) -> DurableFuture[T]: ...

    @overload  # any other type form pydantic validates (``int | None``, ``Annotated``, ...)
    def run(self, name: str, action: Action, *, type_hint: Any) -> DurableFuture[Any]: ...

    @abstractmethod
    def run(self, name: str, action: Action, *, type_hint: Any = None) -> DurableFuture[Any]:
        """Run a side effect once and journal its result.

        Once journaled it is never executed again; a crash between the effect
        and its journal commit runs it again (at-least-once).

        The result is journaled as JSON and returned as that JSON, on the first run as on
        a replay (a pydantic model as a dict, a tuple as a list, a ``datetime`` as its
        ISO string), or validated as ``type_hint`` when given (a result that does not fit
        it raises :class:`TerminalError` 500, as it would on every run).
        """


class ObjectSharedContext(Context):
    """A virtual object's or workflow's handler that may read state, concurrently."""

    @property
    @abstractmethod
    def key(self) -> str: ...

    @overload
    async def get(self, name: str, type_hint: None = None) -> Any: ...

    @overload
    async def get(self, name: str, type_hint: type[T]) -> T | None: ...

    @overload  # any other type form pydantic validates (``int | None``, ``Annotated``, ...)
    async def get(self, name: str, type_hint: Any) -> Any: ...

    @abstractmethod
    async def get(self, name: str, type_hint: Any = None) -> Any:
        """The state value ``name``, or ``None``; validated as ``type_hint`` when given
        (a stored value that does not fit raises :class:`TerminalError` 500)."""

    @abstractmethod
    async def state_keys(self) -> list[str]: ...


class ObjectContext(ObjectSharedContext):
    """An exclusive handler: one at a time per key, may write state."""

    @abstractmethod
    def set(self, name: str, value: Any) -> None: ...

    @abstractmethod
    def clear(self, name: str) -> None: ...

    @abstractmethod
    def clear_all(self) -> None: ...


class DurablePromise(ABC, Generic[T]):
    """A workflow's named promise: resolved once, awaited by any of its handlers."""

    @abstractmethod
    def value(self) -> DurableFuture[T]:
        """Wait for the value; a rejected promise raises ``TerminalError``."""

    @abstractmethod
    async def peek(self) -> T | None:
        """The value if already resolved, else ``None``."""

    @abstractmethod
    async def resolve(self, value: T) -> None: ...

    @abstractmethod
    async def reject(self, message: str) -> None: ...


class WorkflowSharedContext(ObjectSharedContext):
    """A workflow's shared handler: reads state and uses promises, during and after ``run``."""

    @overload
    def promise(self, name: str, type_hint: None = None) -> DurablePromise[Any]: ...

    @overload
    def promise(self, name: str, type_hint: type[T]) -> DurablePromise[T]: ...

    @overload  # any other type form pydantic validates (``int | None``, ``Annotated``, ...)
    def promise(self, name: str, type_hint: Any) -> DurablePromise[Any]: ...

    @abstractmethod
    def promise(self, name: str, type_hint: Any = None) -> DurablePromise[Any]:
        """Workflow promise ``name``. Its value (``value()``, ``peek()``) is the JSON it was
        resolved with, or validated as ``type_hint`` when given (a value that does not fit
        raises :class:`TerminalError` 500 in the handler that reads it)."""


class WorkflowContext(WorkflowSharedContext, ObjectContext):
    """A workflow's ``run`` handler: state, promises, once per workflow id."""
