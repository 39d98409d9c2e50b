"""Workflow promises: a handler waiting for one, and whoever resolves or rejects it.

A promise is durable (kept in the :class:`~streams.engine.store.PartitionStore`); who
waits for it is not: the waits are rebuilt from the journals of the invocations restored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from streams.engine.invocation import Invocation
from streams.engine.journal import Promise
from streams.engine.store import ObjectKey, PartitionStore


class Promises:
    """Resolves and rejects one partition's workflow promises, and wakes their waiters."""

    def __init__(
        self,
        store: PartitionStore,
        invocations: Mapping[str, Invocation],
        wake: Callable[[], None],
    ) -> None:
        self._store = store
        self._invocations = invocations
        self._wake = wake
        #: (workflow, id, promise name) -> (invocation id, journal entry) of each waiter
        self.waiters: dict[tuple[str, str, str], set[tuple[str, int]]] = {}

    def get(self, obj: ObjectKey, name: str) -> Promise | None:
        return self._store.promise(obj, name)

    def wait(self, inv: Invocation, index: int, name: str) -> None:
        """Complete entry ``index`` of ``inv`` when promise ``name`` of its workflow does."""
        obj = ObjectKey.of(inv.meta.target)
        promise = self._store.promise(obj, name)
        if promise is not None:
            inv.complete_entry(index, value=promise.value, failure=promise.failure)
            return
        self.waiters.setdefault((*obj, name), set()).add((inv.meta.id, index))

    def complete(self, obj: ObjectKey, name: str, promise: Promise) -> bool:
        """Resolve or reject a promise; False when it was already completed."""
        if not self._store.complete_promise(obj, name, promise):
            return False
        for inv_id, index in self.waiters.pop((*obj, name), set()):
            waiter = self._invocations.get(inv_id)
            if waiter is None or waiter.meta.status == "completed":
                continue
            entry = waiter.journal[index] if index < len(waiter.journal) else None
            if entry is not None and entry.kind == "promise_get" and entry.name == name:
                waiter.complete_entry(index, value=promise.value, failure=promise.failure)
        self._wake()
        return True

    def forget_waits(self, inv: Invocation) -> None:
        """A completed invocation (cancelled or killed, perhaps) waits on no promise."""
        target = inv.meta.target
        if target.key is None or not self.waiters:  # nobody waits on a promise here
            return
        for index, entry in enumerate(inv.journal):
            if entry.kind == "promise_get" and entry.name is not None:  # "" is a name
                scope = (target.service, target.key, entry.name)
                waiters = self.waiters.get(scope)
                if waiters is not None:
                    waiters.discard((inv.meta.id, index))
                    if not waiters:
                        del self.waiters[scope]
