"""Calls and completions between two partitions of one process.

**Calls.** A call or send that a handler makes to an invocation whose partition runs in the
same process is held by :class:`LocalCalls` until the end of the step. The worker then
checks, per partition, that nothing can be ahead of it: every record on the partition has
been read (the consumer's position is at the partition's high watermark, asked of the
broker after the call was made) and none of the worker's own records to it is still
uncommitted. Where that holds, the callee's processor applies the call as if its record had
arrived there and then, and the record is never written: the callee's invocation goes to
the changelog in the same transaction as the caller's journal entry that made the call.
Where it does not, or where the callee's key is busy, the call travels as a record, as do
the records held behind it; order per partition is kept either way.

**Completions.** A callee's outcome travels to its caller as a ``Completion`` record on the caller's
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
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from streams.engine.outbox import Out
from streams.engine.partition import PartitionProcessor
from streams.wire.records import Completion, Invoke


@dataclass(frozen=True, slots=True)
class _Held:
    out: Out  # the record, written when the call cannot run here
    invoke: Invoke | None  # None: another record, held so as not to pass a held call
    trace: str | None


class LocalCalls:
    """Holds calls to the processors in ``processors`` (by ingress partition) until the
    worker knows which partitions have nothing ahead of them, then runs or emits them."""

    def __init__(self, processors: Mapping[int, PartitionProcessor], ingress: str) -> None:
        self._processors = processors
        self._ingress = ingress
        self._held: dict[int, list[_Held]] = {}
        self._taken: set[int] = set()  # partitions of the batch being decided (take)
        self._called: set[int] = set()  # partitions with a call held since the last take
        #: Partitions of the batch :meth:`take` returned last with a call held since the
        #: take before: a call kept by :meth:`release` may be decided against the watermark
        #: asked for it, but such a call needs one asked after it was made.
        self.called_since: set[int] = set()
        #: Calls run without their records so far (statistics).
        self.ran = 0

    @property
    def held(self) -> bool:
        return bool(self._held)

    def hold(self, owner: int, invoke: Invoke, out: Out, trace: str | None) -> bool:
        """Hold ``invoke`` (written as ``out``), a handler's call or send to partition
        ``owner``; False when it cannot skip Kafka (another process runs the partition,
        or it is a delayed send), and the caller emits it."""
        processor = self._processors.get(owner)
        if processor is None or processor.closed or invoke.due is not None:
            return False
        self._held.setdefault(owner, []).append(_Held(out, invoke, trace))
        self._called.add(owner)
        return True

    def behind(self, out: Out) -> bool:
        """Hold ``out`` too when it goes to an ingress partition with a call held or being
        decided, which it must not pass; False when it can be emitted now."""
        if out.topic != self._ingress:
            return False
        if out.partition not in self._held and out.partition not in self._taken:
            return False
        self._held.setdefault(out.partition, []).append(_Held(out, None, None))
        return True

    def take(self) -> dict[int, list[_Held]]:
        """What is held now, by partition, to :meth:`release` once the worker knows which
        of its partitions have nothing ahead of them. Calls made meanwhile are held for
        the next batch: they were made after the worker asked."""
        batch, self._held = self._held, {}
        self._taken = set(batch)
        self.called_since, self._called = self._called, set()
        return batch

    @staticmethod
    def calling(batch: Mapping[int, list[_Held]]) -> set[int]:
        """The partitions of ``batch`` with a call held (others hold only records)."""
        return {owner for owner, queue in batch.items() if any(i.invoke for i in queue)}

    def release(
        self,
        batch: dict[int, list[_Held]],
        ready: Mapping[int, int],
        unsent: Collection[tuple[int, bytes | None]],
        emit: Callable[[Out], None],
        keep: Collection[int] = (),
    ) -> int:
        """Run the calls of ``batch`` held for the ``ready`` partitions (partition -> the
        offset the next record there will have) in their processors, in order, except
        those whose partition and key are in ``unsent`` (records of this process to that
        key are not committed yet); ``emit`` every other record of the batch, in order. A
        call to a key whose record was emitted goes as a record too, so as not to pass it.
        What is held for a partition in ``keep`` stays held, ahead of what was held since
        :meth:`take`: the worker reads the records ahead of it first. How many calls ran."""
        ran = 0
        for owner, queue in batch.items():
            self._taken.discard(owner)
            if owner in keep:
                self._held[owner] = queue + self._held.get(owner, [])
                continue
            processor = self._processors.get(owner)
            seq = ready.get(owner)
            passed: set[bytes | None] = set()  # keys of the records emitted here
            for item in queue:
                key = item.out.key
                if (
                    processor is not None
                    and seq is not None
                    and item.invoke is not None
                    and key not in passed
                    and (owner, key) not in unsent
                    and processor.invoke_locally(item.invoke, item.out, item.trace, seq)
                ):
                    ran += 1
                    continue
                passed.add(key)
                emit(item.out)
        self._taken = set()
        self.ran += ran
        return ran

    def forget(self) -> None:
        """Drop what is held: the worker dropped its partitions (a failed transaction)."""
        self._held = {}
        self._taken = set()
        self._called = set()


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

    def applied(self, record: Out) -> bool:
        """Whether a caller applied the completion written as ``record`` since the last
        snapshot (so that the snapshot will most likely leave the record out)."""
        return id(record) in self._applied

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
