"""Binds handler definitions at start-up: one registry per worker, duplicates rejected."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from handlers.context import HandlerRef
from handlers.exceptions import TerminalError
from handlers.retry import RetryPolicy
from handlers.service import HandlerDef, ServiceDefinition, Workflow, handler_of
from streams.errors import KourierError
from streams.wire.records import Target, first_problem


class RegistryError(KourierError, ValueError):
    """A service or handler that cannot be registered or found."""


class Registry:
    """The services a worker hosts, by name, and the retry policy of handlers and services
    that name none (``default_retry``, from ``KOURIER_RETRY_*``)."""

    def __init__(
        self, services: Iterable[ServiceDefinition], default_retry: RetryPolicy | None = None
    ) -> None:
        self.default_retry = default_retry or RetryPolicy()
        self.services: dict[str, ServiceDefinition] = {}
        for service in services:
            if service.name in self.services:
                raise RegistryError(f"two services are named {service.name!r}")
            if not service.handlers:
                raise RegistryError(f"service {service.name!r} has no handlers")
            if isinstance(service, Workflow) and service.run_handler is None:
                # Its run could never be called, and its promises would wait for it forever.
                raise RegistryError(f"workflow {service.name!r} has no main handler (@.main())")
            for handler in service.handlers.values():
                _ = handler.signature  # fail now, not at the first call, on a bad signature
            self.services[service.name] = service

    def resolve(self, target: Target) -> HandlerDef:
        """The handler for ``target``, or a :class:`LookupError` saying what is missing."""
        service = self.services.get(target.service)
        if service is None:
            raise LookupError(f"unknown service {target.service!r}")
        handler = service.handlers.get(target.handler)
        if handler is None:
            raise LookupError(f"{target.service} has no handler {target.handler!r}")
        if service.keyed and target.key is None:
            raise LookupError(f"{service.kind} {target.service} needs a key")
        if not service.keyed and target.key is not None:
            raise LookupError(f"service {target.service} takes no key")
        return handler

    def retry_of(self, handler: HandlerDef) -> RetryPolicy:
        """The policy ``handler``'s failed attempts follow: its own, its service's, or the
        worker's default."""
        return handler.retry or self.default_retry

    def is_workflow_run(self, target: Target) -> bool:
        """Whether ``target`` is a workflow's ``run`` (every worker of a namespace hosts
        every service, so the registry knows)."""
        service = self.services.get(target.service)
        handler = None if service is None else service.handlers.get(target.handler)
        return handler is not None and handler.kind == "workflow"

    def manifest(self) -> list[dict[str, Any]]:
        """What the ingress needs to route and validate calls."""
        return [
            {
                "name": s.name,
                "kind": s.kind,
                "handlers": {h.name: {"kind": h.kind or "service"} for h in s.handlers.values()},
            }
            for s in self.services.values()
        ]


def load_services(spec: str) -> list[ServiceDefinition]:
    """Services from ``module`` (every definition in it) or ``module:attr`` (one or a list)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import {module_name!r}: {exc}") from None
    except (TypeError, ValueError) as exc:  # a relative name (".handlers"), an empty one
        raise RegistryError(f"{module_name!r} is not a module name: {exc}") from None
    if attr:
        if not hasattr(module, attr):
            raise RegistryError(f"{module_name} has no attribute {attr!r}")
        found = getattr(module, attr)
        items = found if isinstance(found, list | tuple) else [found]
    else:
        items = list(vars(module).values())
    services = [item for item in items if isinstance(item, ServiceDefinition)]
    if not services:
        raise RegistryError(f"{spec} defines no Service, VirtualObject or Workflow")
    unique: dict[int, ServiceDefinition] = {id(s): s for s in services}
    return list(unique.values())


def target_of(ref: HandlerRef, key: str | None, handler: str | None, kind: str) -> Target:
    """The target a handler names; one no record can carry (a key over 4,096 characters,
    a name with a space), or a keyed handler named as a service's or the other way round
    (``ctx.object()`` for a service's), fails the same way on every attempt: its 400."""
    if isinstance(ref, str):
        if handler is None:
            raise TerminalError(f"name the handler: ctx.{kind}({ref!r}, ..., 'handler')", 400)
        service = ref
    else:
        try:
            definition = handler_of(ref)
        except TypeError as error:  # a function no decorator recorded
            raise TerminalError(str(error), 400) from None
        service, handler = definition.service.name, handler or definition.name
        wanted, found = kind.removesuffix("_send"), definition.service.kind
        if (wanted == "service") != (found == "service"):  # a key where none goes, or none
            # where one must: its record would reach no handler (a dead letter, unanswered)
            raise TerminalError(
                f"ctx.{kind}() names {definition.path}, a handler of {found} {service}: "
                f"use ctx.{found}{kind[len(wanted) :]}()",
                400,
            )
    try:
        return Target(service=service, handler=handler, key=key)
    except ValidationError as error:
        problem = first_problem(error, "target")
        raise TerminalError(f"a call's target is invalid: {problem}", 400) from None
