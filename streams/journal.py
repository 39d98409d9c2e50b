"""What a partition remembers about its invocations: status and journal.

Stored in the compacted ``<ns>.invocations`` changelog: key ``m/<id>`` holds
an :class:`InvocationMeta`, key ``j/<id>/<index>`` one :class:`Entry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from streams.records import Caller, Failure, Target

Status = Literal[
    "pending",  # queued behind another exclusive call on its key
    "scheduled",  # delayed
    "running",
    "backing-off",  # failed, waiting to retry
    "suspended",  # waiting on a call, timer or promise, out of memory
    "paused",  # retries exhausted; resumable from the admin API
    "completed",
]

EntryKind = Literal[
    "call",
    "send",
    "get",
    "set",
    "clear",
    "clear_all",
    "state_keys",
    "run",
    "sleep",
    "attach",
    "cancel",
    "promise_get",
    "promise_peek",
    "promise_resolve",
    "promise_reject",
    "select",
]


class Entry(BaseModel):
    """One context operation of an invocation, and its result once known."""

    model_config = ConfigDict(extra="forbid")

    kind: EntryKind
    name: str | None = None  # state key, ctx.run name, promise name
    target: Target | None = None  # call / send
    callee: str | None = None  # invocation id of a call, send or attach
    value: JsonValue = None
    failure: Failure | None = None
    done: bool = False
    due: float | None = None  # sleeps, delayed sends, call deadlines: epoch seconds

    def describe(self) -> str:
        if self.kind == "sleep":
            return "sleep"
        what = self.target.path() if self.target else (self.name or self.callee or "")
        return f"{self.kind}({what})" if what else self.kind


class InvocationMeta(BaseModel):
    """Everything about an invocation except its journal entries."""

    model_config = ConfigDict(extra="forbid")

    id: str
    target: Target
    exclusive: bool
    argument: JsonValue = None
    headers: dict[str, str] = Field(default_factory=dict)
    mode: Literal["call", "send"] = "call"
    idempotency_key: str | None = None
    request_ids: list[str] = Field(default_factory=list)
    caller: Caller | None = None
    attachers: list[Caller] = Field(default_factory=list)  # handlers attached to it
    cancel_requested: bool = False  # a cancel not yet delivered at an await point
    status: Status = "pending"
    seq: int = 0  # arrival order within the partition (ingress offset)
    attempt: int = 1
    journal_length: int = 0
    created_at: float = 0.0
    modified_at: float = 0.0
    retry_at: float | None = None
    last_error: str | None = None
    value: JsonValue = None  # the outcome, once completed
    failure: Failure | None = None
    expires_at: float | None = None  # completed and retained until then


CANCELLED = Failure(code=409, message="cancelled")
KILLED = Failure(code=409, message="killed")
#: Entries that wait on something other than a call: a cancel fails them directly.
LOCAL_WAITS = frozenset({"sleep", "promise_get", "attach"})


@dataclass(frozen=True, slots=True)
class Promise:
    """A workflow's durable promise once completed: a value, or a rejection.

    Kept in the ``<ns>.state`` changelog under ``[workflow, id, name, "promise"]``.
    """

    value: JsonValue = None
    failure: Failure | None = None
