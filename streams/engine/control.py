"""Cancel, kill, purge and resume: what operators and handlers do to an invocation by id.

A cancel is cooperative: an invocation that has not started completes at once with 409;
a started one (running, suspended, backing off or paused) gets the 409 at its next await (a
timer, a promise, an attach; an awaited call first cancels its callee, leaves first, and the
409 comes back as its outcome). A kill
stops it now, without compensation, and kills the calls it has open. Purge forgets a
completed invocation's retained outcome; resume runs a paused one again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Literal

from streams.engine.attempts import Attempts, Complete
from streams.engine.invocation import Invocation
from streams.engine.journal import CANCELLED, KILLED, LOCAL_WAITS
from streams.engine.outbox import Outbox
from streams.wire.records import (
    Caller,
    Cancel,
    Completion,
    Control,
    Failure,
    Kill,
    Purge,
    Response,
    Resume,
)


class Controls:
    """Applies control records to one partition's invocations and answers them."""

    def __init__(
        self,
        invocations: Mapping[str, Invocation],
        outbox: Outbox,
        attempts: Attempts,
        *,
        complete: Complete,
        forget: Callable[[Invocation], None],
        touch: Callable[[Invocation], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._invocations = invocations
        self._outbox = outbox
        self._attempts = attempts
        self._complete = complete
        self._forget = forget
        self._touch = touch
        self._clock = clock  # the partition's, which retention counts by

    def apply(self, record: Control, origin: str | None = None) -> None:
        """Act on an invocation by id; answer ``request_id`` with what happened. A cancel or
        kill that caller ``origin`` sends on to it acts only if that caller started it. Those
        carry no ``request_id``: one that does is a client's, whatever its headers say, and is
        answered as any."""
        inv = self._invocations.get(record.invocation_id)
        if inv is not None and inv.meta.outlived(self._clock()):
            inv = None  # its retention has passed: as if the sweep had forgotten it
        outcome: Failure | Literal["success", "accepted"]
        # The caller that sent it on, and the entry whose deadline passed (if that was why).
        caller_id, _, digits = (origin or "").partition("/")
        entry = int(digits) if digits.isdecimal() and len(digits) < 10 else None
        starter = None if inv is None else inv.meta.caller
        if (
            inv is not None
            and origin is not None
            and record.request_id is None
            and isinstance(record, Cancel | Kill)
            and (
                starter is None
                or starter.invocation_id != caller_id
                or entry not in (None, starter.entry)  # its other call, which joined it
            )
        ):
            self._let_go(inv, caller_id, entry, record)
            return
        if inv is None:
            outcome = Failure(
                code=404,
                message=f"invocation {record.invocation_id} is unknown: it never existed, or "
                "it completed and its outcome is no longer retained",
            )
        elif isinstance(record, Purge):
            if inv.meta.status == "completed":
                self._forget(inv)
                outcome = "success"
            else:
                outcome = Failure(
                    code=409, message=f"invocation is {inv.meta.status}; only completed ones purge"
                )
        elif isinstance(record, Resume):
            if inv.handler_def is None:
                outcome = Failure(
                    code=409, message=f"{inv.meta.target.path()} is not deployed on this worker"
                )
            elif inv.meta.status == "paused" and not _can_run(inv):
                outcome = Failure(
                    code=409,
                    message="its journal came back incomplete from the changelog, and a "
                    "replay would not follow it: cancel or kill it",
                )
            elif inv.meta.status == "paused":
                inv.meta.attempt, inv.meta.last_error = 1, None
                self._attempts.run(inv)
                outcome = "success"
            else:
                outcome = Failure(
                    code=409, message=f"invocation is {inv.meta.status}; only paused ones resume"
                )
        elif inv.meta.status == "completed":
            outcome = Failure(code=409, message="invocation already completed")
        elif isinstance(record, Kill):
            self.kill(inv)
            outcome = "success"
        else:
            outcome = "success" if self.cancel(inv) else "accepted"
        if record.request_id is None:
            return
        if isinstance(outcome, Failure):
            self._outbox.failure_response(record.request_id, record.invocation_id, outcome)
        else:
            response = Response(
                request_id=record.request_id, invocation_id=record.invocation_id, status=outcome
            )
            self._outbox.response(response)

    def cancel(self, inv: Invocation) -> bool:
        """Cancel ``inv``; True when it is done with at once: it had not started, or it is
        paused and cannot run (its handler not deployed here, or its journal incomplete in
        the changelog, which a replay would not follow). A paused one that can run runs once
        more (``deliver_cancel``), so that its handler compensates, as a running one does."""
        meta = inv.meta
        self._pass_on(inv, Cancel)  # a paused one may have left calls open, too
        unstarted = meta.status in ("pending", "scheduled")
        if unstarted or (meta.status == "paused" and not _can_run(inv)):
            inv.close()
            self._complete(inv, None, CANCELLED)
            return True
        open_now = frozenset(
            index for index, e in enumerate(inv.journal) if e.kind == "call" and not e.done
        )
        # A cancel again while one is pending: the calls open at the first still carry it
        # (after a restore, which does not know them, any call still does).
        if not meta.cancel_requested:
            inv.cancel_calls = open_now
        elif inv.cancel_calls is not None:
            inv.cancel_calls |= open_now
        meta.cancel_requested = True
        self._touch(inv)
        self.deliver_cancel(inv)
        return False

    def deliver_cancel(self, inv: Invocation) -> None:
        """Fail what ``inv`` awaits right now (a timer, a promise, an attach) with 409.

        Only a wait the handler is in counts: an entry left open by a ``select`` it lost
        is no longer awaited. A suspended, backing-off or paused invocation runs again at
        once (a paused one as its next attempt), and its replay meets the cancel at the first
        open wait or new entry it reaches (one that fails before either ends cancelled: see
        ``Attempts._back_off``). Awaited calls
        are not failed here: the cancel travels to the callee first (leaves first), and its
        409 comes back as the call's outcome.
        """
        if not inv.meta.cancel_requested:
            return
        if inv.meta.status == "paused" and _can_run(inv):
            inv.meta.attempt += 1
            self._attempts.run(inv)
            return
        if inv.meta.status in ("suspended", "backing-off"):  # now, not at its retry time
            self._attempts.run(inv)
            return
        for index, future in sorted(inv.waiting.items()):
            entry = inv.journal[index]
            if not future.done() and not entry.done and entry.kind in LOCAL_WAITS:
                inv.cancel_delivered()
                inv.complete_entry(index, failure=CANCELLED)
                return

    def _let_go(
        self, inv: Invocation, caller_id: str, entry: int | None, record: Cancel | Kill
    ) -> None:
        """A caller that did not start ``inv`` (it joined it by idempotency key, or met a
        workflow's run already started) was cancelled or killed, or its call's deadline
        passed (``entry``): ``inv`` goes on, and only that caller's waits on it end (that
        entry's alone for a deadline), a cancelled one with 409 cancelled."""

        def ends(caller: Caller) -> bool:
            return caller.invocation_id == caller_id and entry in (None, caller.entry)

        mine = [caller for caller in inv.meta.attachers if ends(caller)]
        if not mine:
            return
        inv.meta.attachers = [caller for caller in inv.meta.attachers if not ends(caller)]
        self._touch(inv)
        if isinstance(record, Cancel):
            for caller in mine:
                completion = Completion(caller=caller, invocation_id=inv.meta.id, failure=CANCELLED)
                self._outbox.completion(completion)

    def kill(self, inv: Invocation) -> None:
        """Stop ``inv`` now, without compensation; its open calls are killed too."""
        self._pass_on(inv, Kill)
        inv.close()
        self._complete(inv, None, KILLED)

    def _pass_on(self, inv: Invocation, kind: type[Cancel | Kill]) -> None:
        """Cancel or kill the calls ``inv`` has open, as their caller. One queued on this
        partition is done with here and now: sent as a record, it was still queued when
        ``inv`` let go of its key, and one queued behind that key (``inv`` called its own
        object) was handed the key and ran before its record came back."""
        for callee in _open_calls(inv):
            queued = self._invocations.get(callee)
            if queued is not None and queued.meta.status in ("pending", "scheduled"):
                self.apply(kind(invocation_id=callee), origin=inv.meta.id)
            else:
                self._outbox.control(kind(invocation_id=callee), origin=inv.meta.id)


def _can_run(inv: Invocation) -> bool:
    """Whether a paused ``inv`` can run again here: its handler is deployed, and its
    journal was restored whole."""
    return inv.handler_def is not None and len(inv.journal) == inv.meta.journal_length


def _open_calls(inv: Invocation) -> list[str]:
    """Callees of the calls ``inv`` still waits for."""
    return [e.callee for e in inv.journal if e.kind == "call" and not e.done and e.callee]
