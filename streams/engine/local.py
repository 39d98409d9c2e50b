"""Completions between two partitions of one process.

A callee's outcome travels to its caller as a ``Completion`` record on the caller's
partition. When one process runs both partitions, :class:`LocalCompletions` also hands the
completion straight to the caller's processor, so that the caller resumes in its callee's
transaction instead of one transaction and one fetch later.

A caller that applies the completion records the outcome in its journal, and the changelog
write of that entry goes into the next snapshot. When that is the snapshot the record is
in, the record is left out of it: the transaction then commits the caller's journal with
the outcome in it, or commits nothing at all, and the record would find the entry done. A
completion applied after its record's snapshot was taken, or not applied at all (the
caller's partition went away, the caller was gone), leaves its record in place: it is then
what the next owner of the caller's partition resumes the caller from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from streams.engine.outbox import Out
from streams.engine.partition import PartitionProcessor
from streams.wire.records import Completion


class LocalCompletions:
    """Delivers completions to the processors in ``processors`` (by ingress partition),
    and tells which completion records the callers' journals have made redundant."""

    def __init__(self, processors: Mapping[int, PartitionProcessor]) -> None:
        self._processors = processors
        #: Completions handed to a processor so far (a worker's step waits on new ones).
        self.delivered = 0
        # Records whose completion a caller applied since the last snapshot, by id(): the
        # record itself (held, so no other object can take its id) and the caller's
        # processor.
        self._applied: dict[int, tuple[Out, PartitionProcessor]] = {}

    def deliver(self, owner: int, completion: Completion, record: Out) -> None:
        """Hand ``completion`` (written as ``record``) to the processor of partition
        ``owner`` on the next loop round, if this process runs it (on the loop)."""
        processor = self._processors.get(owner)
        if processor is None:
            return
        self.delivered += 1
        asyncio.get_running_loop().call_soon(self._apply, processor, completion, record)

    def _apply(self, processor: PartitionProcessor, completion: Completion, record: Out) -> None:
        if processor.on_completion(completion):
            self._applied[id(record)] = (record, processor)

    def forget(self) -> None:
        """Drop what was applied since the last snapshot: the worker dropped its
        partitions and their records (a failed transaction, before restoring)."""
        self._applied = {}

    def needed(self, out: list[Out]) -> list[Out]:
        """``out``, a snapshot's records, without the completions that callers applied
        since the last snapshot. Call it right before flushing the processors, so that the
        callers' journal entries go into the same snapshot; a caller whose processor is
        no longer there keeps its record."""
        if not self._applied:
            return out
        applied, self._applied = self._applied, {}

        def redundant(record: Out) -> bool:
            found = applied.get(id(record))
            if found is None:
                return False
            owner = found[1]
            return self._processors.get(owner.partition) is owner and not owner.closed

        return [record for record in out if not redundant(record)]
