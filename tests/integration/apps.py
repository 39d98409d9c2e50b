"""Handlers used by the integration tests (importable by worker subprocesses too)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from datetime import timedelta

from handlers import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    RetryPolicy,
    Service,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    WorkflowSharedContext,
    select,
)

# In-process tests release a blocked handler through these (not durable, test-only).
GATES: dict[str, asyncio.Event] = {}
STARTED: dict[str, asyncio.Event] = {}
# ... and a ctx.run action blocked in its thread, and count its runs, through these.
ACTION_STARTED: dict[str, threading.Event] = {}
ACTION_GATES: dict[str, threading.Event] = {}
ACTION_RUNS: dict[str, int] = {}
_ACTION_RUNS_LOCK = threading.Lock()

tally = VirtualObject("Tally")


@tally.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("count") or 0) + n
    ctx.set("count", value)
    return value


@tally.handler(kind="shared")
async def count(ctx: ObjectSharedContext) -> int:
    value: int = await ctx.get("count") or 0
    return value


@tally.handler()
async def append(ctx: ObjectContext, item: int) -> int:
    items: list[int] = await ctx.get("items") or []
    items.append(item)
    ctx.set("items", items)
    return len(items)


@tally.handler(kind="shared")
async def items(ctx: ObjectSharedContext) -> list[int]:
    value: list[int] = await ctx.get("items") or []
    return value


def _seconds_since(moment: float) -> float:
    return time.time() - moment


@tally.handler()
async def arrive(ctx: ObjectContext, spec: dict[str, float]) -> int:
    """A delayed send arriving: keeps its tag and how late it ran (negative: early)."""
    late = await ctx.run("lateness", lambda: _seconds_since(spec["due"]))
    arrivals: list[list[float]] = await ctx.get("arrivals") or []
    arrivals.append([spec["tag"], late])
    ctx.set("arrivals", arrivals)
    return len(arrivals)


@tally.handler(kind="shared")
async def arrivals(ctx: ObjectSharedContext) -> list[list[float]]:
    value: list[list[float]] = await ctx.get("arrivals") or []
    return value


@tally.handler()
async def hold(ctx: ObjectContext) -> str:
    """Exclusive: waits for the test to open its gate."""
    STARTED.setdefault(ctx.key, asyncio.Event()).set()
    await GATES.setdefault(ctx.key, asyncio.Event()).wait()
    ctx.set("held", True)
    return "released"


@tally.handler()
async def act_twice(ctx: ObjectContext) -> list[int]:
    """Two ``ctx.run`` actions, the first waiting in its thread for the test's gate, the
    second taking 0.3 s; returns how many times each has run in this process for the key."""
    key = ctx.key
    started = ACTION_STARTED.setdefault(key, threading.Event())
    gate = ACTION_GATES.setdefault(key, threading.Event())

    def counted(name: str) -> int:
        with _ACTION_RUNS_LOCK:
            ACTION_RUNS[f"{key}/{name}"] = ACTION_RUNS.get(f"{key}/{name}", 0) + 1
            return ACTION_RUNS[f"{key}/{name}"]

    def first() -> int:
        started.set()
        gate.wait(60)
        return counted("first")

    def second() -> int:
        time.sleep(0.3)  # long enough to be cut off by a hand-over that started it
        return counted("second")

    return [await ctx.run("first", first), await ctx.run("second", second)]


@tally.handler()
async def refuse(ctx: ObjectContext, code: int) -> None:
    raise TerminalError(f"refused with {code}", status_code=code)


@tally.handler()
async def hoard(ctx: ObjectContext, what: str) -> object:
    """Produces a value larger than a Kafka record may be, as ``what`` says."""
    big = "x" * 1_200_000
    if what == "state":
        ctx.set("big", big)
    elif what == "run":
        await ctx.run("big", lambda: big)
    elif what == "call":
        await ctx.service(echo).request(big)
    return big if what == "result" else "unreachable"


@tally.handler()
async def swell(ctx: ObjectContext, spec: dict[str, object]) -> object:
    """Makes a string of ``bytes`` and returns it, or journals it (``"as": "run"``) and
    sleeps, so that the journal is written before the invocation completes."""
    big = "x" * int(str(spec["bytes"]))
    if spec["as"] == "run":
        await ctx.run("swell", lambda: big)
        await ctx.sleep(timedelta(milliseconds=1))
        return "ran"
    return big


@tally.handler(kind="shared")
async def whoami(ctx: ObjectSharedContext) -> int:
    return os.getpid()


relay = Service("Relay")


@relay.handler()
async def fan_out(ctx: Context, spec: dict[str, object]) -> int:
    """Sends ``count`` items to one key, then returns how many were sent."""
    key = str(spec["key"])
    total = int(str(spec["count"]))
    for item in range(total):
        ctx.object_send(append, key).send(item)
    return total


#: How many times ``Relay/tick`` ran for each mark, in this process.
TICKS: dict[str, int] = {}


@relay.handler()
async def tick(ctx: Context, mark: str) -> None:
    """Counts its runs and writes nothing: sent, its record is all a worker commits."""
    TICKS[mark] = TICKS.get(mark, 0) + 1


@relay.handler()
async def note(ctx: Context, text: str) -> str:
    """Logs ``text`` on the loop and from a ``ctx.run`` action's thread; returns its own
    invocation id, which both lines should name."""
    notes = logging.getLogger("apps.notes")
    notes.warning("noted %s", text)
    await ctx.run("note", lambda: notes.warning("noted on a thread %s", text))
    return ctx.invocation_id


@relay.handler()
async def mixed(ctx: Context, key: str) -> list[int]:
    """Calls and sends to one key, interleaved: the object sees them in issue order."""
    await ctx.object(append, key).request(0)
    ctx.object_send(append, key).send(1)
    ctx.object_send(append, key).send(2)
    await ctx.object(append, key).request(3)
    result: list[int] = await ctx.object("Tally", key, "items").request()
    return result


@relay.handler()
async def sum_of(ctx: Context, keys: list[str]) -> int:
    """Request-response to several objects; returns the sum of their counts."""
    total = 0
    for key in keys:
        total += await ctx.object(add, key).request(1)
    return total


@relay.handler()
async def passes_on(ctx: Context, code: int) -> str:
    """A callee's terminal error reaches the caller with its code; the caller may catch it."""
    try:
        await ctx.object(refuse, "x").request(code)
    except TerminalError as error:
        if error.status_code == 418:
            return f"caught {error.status_code}: {error.message}"
        raise
    return "unreachable"


@relay.handler()
async def echo(ctx: Context, value: object) -> dict[str, object]:
    return {"value": value, "headers": dict(ctx.request().headers)}


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as file:
        file.write(line + "\n")


@relay.handler()
async def effect_then_add(ctx: Context, spec: dict[str, str]) -> int:
    """A side effect outside Kourier (a line appended to a file: the tag and the process
    that ran it, see ``helpers.effect_runs``), then a call."""
    await ctx.run("append", lambda: _append_line(spec["file"], f"{spec['tag']} {os.getpid()}"))
    result: int = await ctx.object(add, spec["key"]).request(1)
    return result


@relay.handler()
async def traced(ctx: Context, key: str) -> int:
    """One of each traced operation: ``ctx.run``, a sleep, a send and a call."""
    await ctx.run("stamp", lambda: key)
    await ctx.sleep(timedelta(milliseconds=10))
    ctx.object_send(add, key).send(1)
    result: int = await ctx.object(add, key).request(2)
    return result


def _first_time(marker: str) -> bool:
    if os.path.exists(marker):
        return False
    with open(marker, "w") as file:
        file.write("first run")
    return True


@relay.handler()
async def drifting(ctx: Context, marker: str) -> str:
    """Non-deterministic on purpose: after a restart it calls another handler than before."""
    if _first_time(marker):
        await ctx.object(hold, "drift").request()  # never released in a worker process
    else:
        await ctx.object(add, "drift").request(1)
    return "done"


@relay.handler()
async def later(ctx: Context, spec: dict[str, int | str]) -> None:
    """A delayed one-way send from a handler."""
    delay = timedelta(milliseconds=int(spec["ms"]))
    ctx.object_send(add, str(spec["key"])).send(1, delay=delay)


brief = VirtualObject("Brief", idempotency_retention=timedelta(seconds=2))


@brief.handler()
async def bump(ctx: ObjectContext) -> int:
    """Remembers idempotency keys for 2 s only."""
    value: int = (await ctx.get("n") or 0) + 1
    ctx.set("n", value)
    return value


trip = VirtualObject("Trip")


@trip.handler()
async def reserve(ctx: ObjectContext, hold_ms: int) -> str:
    """Holds its key in a durable sleep; on cancel it records its compensation."""
    try:
        await ctx.sleep(timedelta(milliseconds=hold_ms))
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    ctx.set("reserved", True)
    return "reserved"


@trip.handler()
async def plan(ctx: ObjectContext, hold_ms: int) -> str:
    """Waits in a call to ``reserve`` on the key ``<key>-hotel``; compensates on failure."""
    try:
        result: str = await ctx.object(reserve, f"{ctx.key}-hotel").request(hold_ms)
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    return result


@trip.handler(kind="shared")
async def notes(ctx: ObjectSharedContext) -> dict[str, object]:
    return {name: await ctx.get(name) for name in await ctx.state_keys()}


signup = Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    """Waits for the emailed link to be clicked (a durable promise)."""
    ctx.set("email", email)
    try:
        secret: str = await ctx.promise("link").value()
    except TerminalError as error:
        ctx.set("status", f"aborted {error.status_code}")
        raise
    ctx.set("status", "verified")
    return f"{email} verified with {secret}"


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("link").resolve(secret)


@signup.handler()
async def progress(ctx: WorkflowSharedContext) -> dict[str, object]:
    return {"status": await ctx.get("status"), "link": await ctx.promise("link").peek()}


@relay.handler()
async def impatient(ctx: Context, spec: dict[str, int | str]) -> str:
    """Calls ``Trip/<key>/reserve`` (which sleeps ``hold_ms``) with a deadline of ``wait_ms``."""
    call = ctx.object(reserve, str(spec["key"]))
    deadline = timedelta(milliseconds=int(spec["wait_ms"]))
    try:
        result: str = await call.request(int(spec["hold_ms"]), timeout=deadline)
    except TerminalError as error:
        return f"gave up: {error.status_code}"
    return result


fragile = Service("Fragile", retry=RetryPolicy(initial=timedelta(milliseconds=10), max_attempts=2))


@fragile.handler()
async def needs_file(ctx: Context, path: str) -> str:
    """Fails (and, after two attempts, pauses) until ``path`` exists."""
    if not await asyncio.to_thread(os.path.exists, path):
        raise RuntimeError(f"{path} does not exist yet")
    return "found"


loop = VirtualObject("Loop")


@loop.handler()
async def bounce(ctx: ObjectContext, path: list[str]) -> list[str]:
    """Calls ``bounce`` on ``path[0]`` with the rest: ``["b", "a"]`` from key ``a`` calls
    back into ``a`` while ``a`` waits — a deadlock, by the contract."""
    if not path:
        return [ctx.key]
    rest: list[str] = await ctx.object(bounce, path[0]).request(path[1:])
    return [ctx.key, *rest]


@relay.handler()
async def start_signup(ctx: Context, spec: dict[str, int | str]) -> str:
    """Request-response into a workflow's run, with a deadline when ``timeout_ms`` is set."""
    call = ctx.workflow(run, str(spec["id"]))
    timeout = timedelta(milliseconds=int(spec["timeout_ms"])) if "timeout_ms" in spec else None
    try:
        result: str = await call.request(str(spec["email"]), timeout=timeout)
    except TerminalError as error:
        return f"failed {error.status_code}"
    return result


@relay.handler()
async def send_signup(ctx: Context, spec: dict[str, str]) -> str:
    """A one-way send to a workflow's run (named by strings); returns the run's id."""
    handle = ctx.workflow_send("Signup", spec["id"], "run").send(spec["email"])
    return await handle.invocation_id()


@relay.handler()
async def schedule_then_cancel(ctx: Context, spec: dict[str, int | str]) -> str:
    """A delayed send to ``Tally/<key>/add``, cancelled by the id its handle gives."""
    delay = timedelta(milliseconds=int(spec["ms"]))
    handle = ctx.object_send(add, str(spec["key"])).send(1, delay=delay)
    invocation_id = await handle.invocation_id()
    ctx.cancel_invocation(invocation_id)
    return invocation_id


@relay.handler()
async def unsendable(ctx: Context, kind: str) -> dict[str, object]:
    """Calls or sends an argument that is not JSON; then a call that works."""
    try:
        if kind == "call":
            await ctx.service(echo).request(object())
        else:
            ctx.service_send(echo).send({"when": object()})
    except TerminalError as error:
        caught = f"{error.status_code}: {error.message}"
    else:
        caught = "nothing raised"
    after: dict[str, object] = await ctx.service(echo).request("after")
    return {"caught": caught, "after": after["value"]}


#: Synchronous ctx.run actions (threading events: they are set and awaited on threads).
BLOCKING: dict[str, threading.Event] = {}
RELEASE: dict[str, threading.Event] = {}
FINISHED: dict[str, threading.Event] = {}


def _block(tag: str) -> str:
    BLOCKING.setdefault(tag, threading.Event()).set()
    RELEASE.setdefault(tag, threading.Event()).wait(60)  # a blocking client library, say
    FINISHED.setdefault(tag, threading.Event()).set()
    return tag


@relay.handler()
async def blocking_effect(ctx: Context, tag: str) -> str:
    """A synchronous ``ctx.run`` action that blocks its thread until the test releases it
    (60 s at most)."""
    result: str = await ctx.run("block", lambda: _block(tag))
    return result


@relay.handler()
async def blocking_to_thread(ctx: Context, tag: str) -> str:
    """Blocks a thread of the loop's default executor (``asyncio.to_thread``) until the
    test releases it (60 s at most)."""
    return await asyncio.to_thread(_block, tag)


async def _race(ctx: ObjectContext, hold_ms: int) -> str:
    """``select`` between a short and a long sleep, then a durable wait that compensates
    on cancel: the cancel must reach that wait, not the sleep that lost the race."""
    winner, _ = await select(
        fast=ctx.sleep(timedelta(milliseconds=100)), slow=ctx.sleep(timedelta(minutes=2))
    )
    try:
        await ctx.sleep(timedelta(milliseconds=hold_ms))
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    return winner


trip.handler("race")(_race)

#: The same race, on an object whose waiting handlers suspend after 200 ms.
sleepy = VirtualObject("Sleepy", inactivity_timeout=timedelta(milliseconds=200))
sleepy.handler("race")(_race)


@sleepy.handler(kind="shared")
async def sleepy_notes(ctx: ObjectSharedContext) -> dict[str, object]:
    return {name: await ctx.get(name) for name in await ctx.state_keys()}


SERVICES = [tally, relay, brief, trip, signup, fragile, loop, sleepy]
