"""Who waits for an invocation's outcome, and attaching to one.

An invocation answers everyone who waits for it when it completes: the request ids of
callers outside Kourier, the handler that called it, and handlers attached to it. A call
that names an invocation that exists already (the same idempotency key, a workflow's id)
joins it instead of running again; a send gets a receipt. An attach names an invocation by
id, by idempotency key, or as a workflow's run, and waits for its outcome (or, without
``wait``, asks for it now: 470 while it runs). At most ``MAX_WAITERS`` wait for one
invocation, their ids ``MAX_WAITER_BYTES`` at most, so that its record never grows past
what Kafka takes. A request id stays until
the outcome: an HTTP client whose attach was cut off (its own timeout, a proxy's) leaves its
id behind, and nothing tells the worker. So a new waiter takes the place of the request id
that has waited longest, which is answered 429 (attach again), except the call that made
the invocation; then that of the handler attached longest (a handler that attached and went
on, whose attach lost a select or whose invocation ended, leaves it behind too: nothing
tells this partition), whose attach fails with 429. The calling handler is never let go.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

from streams.engine.invocation import Invocation
from streams.engine.outbox import Outbox
from streams.engine.registry import Registry
from streams.wire import ids
from streams.wire.records import (
    AttachRequest,
    Caller,
    Completion,
    Failure,
    Invoke,
    Response,
    Target,
)

#: Callers and attached handlers one invocation answers at most.
MAX_WAITERS = 1_000
#: Bytes their request ids and attached handlers take in the invocation's record at most
#: (as JSON): 1,000 ids of a UUID's length fit, and 900 attached handlers; 1,000 ids of
#: the longest kind (1,024 characters) took a megabyte, past what Kafka takes in one
#: record, and the invocation failed with 413 however small its argument.
MAX_WAITER_BYTES = 64 * 1024
_CALLER_BYTES = 72  # {"invocation_id":"inv_<32 hex>","entry":N}: 66 bytes, N's digits, a comma


def _size(request_id: str) -> int:
    """At most the bytes ``request_id`` takes as JSON (escaped, with quotes and comma)."""
    if request_id.isascii() and request_id.isprintable():
        return len(request_id) + 3 + request_id.count('"') + request_id.count("\\")
    return len(json.dumps(request_id)) + 1


class Waiters:
    """Joins callers and attachers to one partition's invocations, and answers them."""

    def __init__(
        self,
        invocations: Mapping[str, Invocation],
        outbox: Outbox,
        registry: Registry,
        *,
        named_by_key: Callable[[Target, str], str],
        touch: Callable[[Invocation], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._invocations = invocations
        self._outbox = outbox
        self._registry = registry
        self._named_by_key = named_by_key
        self._touch = touch
        self._clock = clock  # the partition's, which retention counts by

    def duplicate(self, inv: Invocation, record: Invoke) -> None:
        """An invoke for an invocation that exists: same idempotency key, or a workflow's
        ``run`` again. It never runs twice; callers get its outcome, senders a receipt."""
        if inv.handler_def is not None and inv.handler.kind == "workflow" and record.mode == "call":
            target = record.target
            failure = Failure(
                code=409,
                message=f"workflow {target.service}/{target.key} has already been started "
                f"(invocation {inv.meta.id}); attach to it for its outcome",
            )
            if record.request_id is not None:
                self._outbox.failure_response(record.request_id, inv.meta.id, failure)
            if record.caller is not None:
                callee = record.invocation_id or inv.meta.id
                self._outbox.completion(
                    Completion(caller=record.caller, invocation_id=callee, failure=failure)
                )
            return
        if record.mode == "send":
            if record.request_id is not None:
                receipt = Response(
                    request_id=record.request_id,
                    invocation_id=inv.meta.id,
                    status="previously_accepted",
                )
                self._outbox.response(receipt)
            return
        self.join(inv, record.request_id, record.caller)

    def join(self, inv: Invocation, request_id: str | None, caller: Caller | None) -> None:
        """Someone else waits for ``inv``: answer now if it is done, else when it is."""
        meta = inv.meta
        if meta.status == "completed":
            if request_id is not None:
                self._outbox.outcome(request_id, meta)
            if caller is not None:
                self._outbox.completion(Completion(
                    caller=caller, invocation_id=meta.id, value=meta.value, failure=meta.failure
                ))  # fmt: skip
            return
        new_request = request_id is not None and request_id not in meta.request_ids
        new_caller = caller is not None and caller != meta.caller and caller not in meta.attachers
        places = MAX_WAITERS - new_request - new_caller  # for those who wait already
        room = MAX_WAITER_BYTES - new_caller * _CALLER_BYTES  # and the bytes they may take
        if request_id is not None and new_request:
            room -= _size(request_id)
        taken = sum(map(_size, meta.request_ids)) + _CALLER_BYTES * len(meta.attachers)

        def crowded() -> bool:
            return len(meta.request_ids) + len(meta.attachers) > places or taken > room

        # The call that made the invocation (its request id first) is never let go: it may
        # have no idempotency key, and a caller that tried again would run it twice.
        kept = 1 if meta.mode == "call" and meta.caller is None else 0
        message = (
            f"newer waiters took the places for {meta.id} ({MAX_WAITERS} at most, their ids "
            f"{MAX_WAITER_BYTES} bytes): attach again (or call again with the same idempotency "
            "key)"
        )
        while crowded() and len(meta.request_ids) > kept:
            oldest = meta.request_ids.pop(kept)
            taken -= _size(oldest)
            self._outbox.failure_response(oldest, meta.id, Failure(code=429, message=message))
            self._touch(inv)
        while crowded() and meta.attachers:
            gone = meta.attachers.pop(0)
            taken -= _CALLER_BYTES
            failure = Failure(code=429, message=message)
            self._outbox.completion(Completion(caller=gone, invocation_id=meta.id, failure=failure))
            self._touch(inv)
        if crowded():  # the call that made it, and room for no one else
            busy = Failure(code=429, message=f"as many as fit already wait for {meta.id}")
            if request_id is not None and new_request:
                self._outbox.failure_response(request_id, meta.id, busy)
            if caller is not None and new_caller:
                self._outbox.completion(Completion(caller=caller, invocation_id=meta.id,
                                                 failure=busy))  # fmt: skip
            return
        if request_id is not None and new_request:
            meta.request_ids.append(request_id)
            self._touch(inv)
        if caller is not None and new_caller:
            meta.attachers.append(caller)
            self._touch(inv)

    def apply(self, record: AttachRequest) -> None:
        """Attach (wait for the outcome) or output (the outcome now, 470 if not ready)."""
        inv_id = self._attached_id(record)
        if inv_id is None:
            problem = "attach by target needs an idempotency key, or a workflow id"
            self._answer_attach(record, None, Failure(code=400, message=problem))
            return
        inv = self._invocations.get(inv_id)
        if inv is None or inv.meta.outlived(self._clock()):
            message = (
                f"invocation {inv_id} is unknown here: it never existed, or it completed and "
                "its outcome was not retained: an invocation keeps it for its service's "
                "retention only (idempotent and workflow invocations for idempotency_retention, "
                "any for completed_retention when the service sets one)"
            )
            self._answer_attach(record, inv_id, Failure(code=404, message=message))
        elif inv.meta.status != "completed" and not record.wait:
            self._answer_attach(record, inv_id, Failure(code=470, message="not ready"))
        else:
            self.join(inv, record.request_id if record.caller is None else None, record.caller)

    def _attached_id(self, record: AttachRequest) -> str | None:
        """The invocation an attach names: by id, by idempotency key, or a workflow's run."""
        if record.invocation_id is not None:
            return record.invocation_id
        target = record.target
        assert target is not None
        try:
            handler = self._registry.resolve(target)
        except LookupError:
            handler = None
        # A workflow's run is named by its id whatever key it was called with, as the
        # invoke named it (an idempotency key looked up first found nothing: 404).
        if handler is not None and handler.kind == "workflow" and target.key is not None:
            return ids.workflow_run_id(target.service, target.key)
        if record.idempotency_key is not None:
            return self._named_by_key(target, record.idempotency_key)
        return None

    def _answer_attach(self, record: AttachRequest, inv_id: str | None, failure: Failure) -> None:
        if record.caller is not None:
            if inv_id is not None:  # a handler's attach always names an id
                completion = Completion(caller=record.caller, invocation_id=inv_id, failure=failure)
                self._outbox.completion(completion)
        else:
            self._outbox.failure_response(record.request_id, inv_id, failure)
