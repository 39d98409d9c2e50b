"""A partition's spill (``streams.engine.spill``): idle invocations' metas and idempotency
keys held on disk, in a private SQLite database that leaves nothing behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from handlers import ObjectContext, VirtualObject
from streams.engine import spill as spill_module
from streams.engine.spill import ColdStore, DedupTable, Spill, SpillFailed
from streams.engine.store import ObjectKey, PartitionStore
from streams.wire.records import Invoke, Target
from tests.unit.harness import TOPICS, Harness

tally = VirtualObject("Tally")


@tally.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    return n


def spill_files() -> list[str]:
    """The files this process holds open that SQLite made for its temporary databases
    (``etilqs_*``) and already unlinked."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while listed
        if "etilqs_" in target and target.endswith("(deleted)"):
            found.append(target)
    return found


def rss_kib() -> int:
    """This process's resident memory now."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_a_meta_is_held_replaced_and_dropped_with_its_count() -> None:
    store = ColdStore(Spill())
    store.put("a", b"meta-a", 2, None)
    store.put("b", b"meta-b", 0, 50.0)
    assert len(store) == 2
    assert store.get("a") == (b"meta-a", 2)
    assert "b" in store
    assert "c" not in store
    store.put("a", b"meta-a2", 3, 10.0)
    assert len(store) == 2, "a replaced meta counted twice"
    assert store.get("a") == (b"meta-a2", 3)
    store.discard("a")
    store.discard("a")
    store.discard("never")
    assert len(store) == 1, "a discard of what is not held changed the count"
    assert store.get("a") is None
    assert list(store.ids()) == ["b"]


def test_only_deadlines_passed_are_due_soonest_first() -> None:
    store = ColdStore(Spill())
    store.put("late", b"m", 0, 30.0)
    store.put("early", b"m", 0, 10.0)
    store.put("scheduled", b"m", 0, None)
    store.put("later", b"m", 0, 90.0)
    assert store.due(5.0, 10) == []
    assert store.due(30.0, 10) == ["early", "late"]
    assert store.due(30.0, 1) == ["early"], "more than the limit"
    store.put("early", b"m", 0, None)  # no longer a retained outcome
    assert store.due(100.0, 10) == ["late", "later"]


def test_a_scope_names_one_id_until_it_is_dropped() -> None:
    table = DedupTable(Spill())
    assert table.get("scope") is None
    table.put("scope", "inv-1")
    table.put("scope", "inv-2")
    table.put("other", "inv-3")
    assert len(table) == 2
    assert table.get("scope") == "inv-2"
    assert table.discard("scope") is True
    assert table.discard("scope") is False, "dropped twice"
    assert len(table) == 1
    assert table.get("scope") is None
    assert table.get("other") == "inv-3"


def test_a_dedup_record_that_names_no_id_drops_its_scope_on_restore() -> None:
    store = PartitionStore(TOPICS, 0)
    store.restore_dedup(b"scope", b'{"invocation_id": "inv-1"}')
    assert store.deduplicated("scope") == "inv-1"
    store.restore_dedup(b"scope", b'{"invocation_id": null}')
    assert store.deduplicated("scope") is None
    store.restore_dedup(b"other", b'{"invocation_id": null}')
    store.restore_dedup(b"scope", None)
    assert len(store.dedup) == 0


def test_unreadable_state_and_dedup_records_are_left_out_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raised out of a restore, such a record ended every worker that took the partition
    over, one after another. Left out, what was read of its name before stands."""
    store = PartitionStore(TOPICS, 0)
    good = b'["Tally", "k", "count"]'
    store.restore_state(good, b"1")
    store.restore_dedup(b"scope", b'{"invocation_id": "inv-1"}')
    for key, value in ((good, b"{not json"), (b"not json", b"2"), (b'["Tally"]', b"2"),
                       (b'["Tally", "k", "p", "promise"]', b'{"failure": {"code": 1}}'),
                       (b'["Tally", "k", "q", "promise"]', b"[1]")):  # fmt: skip
        store.restore_state(key, value)
    store.restore_dedup(b"scope", b"{not json")
    store.restore_dedup(b"\xff", b'{"invocation_id": "inv-2"}')
    assert store.state_of(ObjectKey("Tally", "k")) == {"count": 1}
    assert store.promises == {}
    assert store.deduplicated("scope") == "inv-1"
    assert len(store.dedup) == 1
    unreadable = [r for r in caplog.records if "unreadable, left out" in r.getMessage()]
    assert len(unreadable) == 7


def test_an_object_whose_state_a_restore_reads_cleared_is_not_kept() -> None:
    """A write that empties an object's state lets go of the object; a restore that read
    its names set and then cleared (the changelog's tail, not compacted yet) kept an empty
    one for each such object, a workflow's once its retention ended among them."""
    store = PartitionStore(TOPICS, 0)
    for key in (b'["Signup", "ada", "email"]', b'["Signup", "ada", "link", "promise"]'):
        store.restore_state(key, b'"x"' if b"promise" not in key else b'{"value": "x"}')
        store.restore_state(key, None)
    assert store.state == {}
    assert store.promises == {}


def test_a_closed_spill_holds_nothing_and_takes_nothing() -> None:
    spill = Spill()
    store, table = ColdStore(spill), DedupTable(spill)
    store.put("a", b"meta", 1, 1.0)
    table.put("scope", "a")
    spill.close()
    assert len(store) == 0
    assert store.get("a") is None
    assert "a" not in store
    assert len(table) == 0
    assert table.get("scope") is None
    store.put("b", b"meta", 1, 1.0)
    store.discard("a")
    table.put("other", "b")
    assert table.discard("scope") is False
    assert table.get("other") is None
    assert store.get("b") is None
    assert list(store.ids()) == []
    assert store.due(9.0, 10) == []
    spill.close()


def test_what_passes_the_cache_is_on_disk_and_gone_once_closed() -> None:
    """80 MB of metas grow the process by about the page cache, not by 80 MB; the rest
    is in a file SQLite unlinked as it made it, which the close lets go."""
    before_files = spill_files()
    spill = Spill()
    store = ColdStore(spill)
    meta = os.urandom(4096)
    rss_before = rss_kib()
    for n in range(20_000):
        store.put(f"inv-{n}", meta, 0, None)
    grown_kib = rss_kib() - rss_before
    assert grown_kib < 24 * 1024, f"the RSS grew by {grown_kib} KiB (the cache is 2 MiB)"
    assert store.get("inv-123") == (meta, 0)
    spilled = [f for f in spill_files() if f not in before_files]
    assert spilled, "nothing spilled to a temporary file"
    assert not any(Path(f.removesuffix(" (deleted)")).exists() for f in spilled)
    spill.close()
    assert not [f for f in spill_files() if f in spilled], "the file is still held open"


@pytest.mark.parametrize(
    ("options", "store", "warned"),
    [(["THREADSAFE=1", "TEMP_STORE=1"], 1, False), ([], 1, False),
     (["TEMP_STORE=2"], 2, True), (["DEFAULT_WAL_SYNCHRONOUS=1", "TEMP_STORE=3"], 3, True)],
)  # fmt: skip
def test_a_sqlite_that_keeps_temporary_databases_in_memory_is_named_at_the_start(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    options: list[str],
    store: int,
    warned: bool,
) -> None:
    """A SQLite built with ``SQLITE_TEMP_STORE=2`` or ``3`` keeps a spill in memory however
    large it grows: nothing fails, so the start-up probe says so."""
    monkeypatch.setattr(spill_module, "compile_options", lambda: options)
    assert spill_module.temp_store() == store
    with caplog.at_level("WARNING", logger="kourier.spill"):
        spill_module.probe()
    named = [r.getMessage() for r in caplog.records if "SQLITE_TEMP_STORE" in r.getMessage()]
    assert bool(named) == warned, named
    if warned:
        assert f"SQLITE_TEMP_STORE={store}" in named[0]


def test_this_sqlite_names_how_it_keeps_temporary_databases() -> None:
    """The option the probe reads is there to read (``PRAGMA compile_options``)."""
    assert any(o.startswith("TEMP_STORE=") for o in spill_module.compile_options())


async def test_a_spill_that_fails_stops_the_partition_and_sets_no_record_aside() -> None:
    """A full or failing temporary directory is the worker's fault, not the record's: the
    error ends the step (the next owner takes the partition over) rather than send a good
    record to the dead-letter topic."""
    h = Harness([tally])
    spill = h.processor.spill
    assert spill.db is not None
    spill.db.execute("DROP TABLE dedup")  # every write of an idempotency key fails
    target = Target(service="Tally", key="k", handler="add")
    with pytest.raises(SpillFailed):
        h.send(Invoke(target=target, argument=1, idempotency_key="once", request_id="r"))
    assert [o for o in h.out if o.topic == TOPICS.deadletter] == [], "set aside"
    assert isinstance(spill.failed, SpillFailed), "the failure is not kept for the worker"
    assert isinstance(spill.failed.__cause__, sqlite3.OperationalError)


ROOT = Path(__file__).resolve().parents[2]
#: Runs its arguments in a mount namespace of its own where ``/tmp``, ``/var/tmp`` and the
#: working directory (``/tmp``) are read-only, so SQLite finds no directory to write.
READ_ONLY = (
    'mount -o bind,ro /tmp /tmp && mount -o bind,ro /var/tmp /var/tmp && cd /tmp && exec "$@"'
)


def in_read_only(*command: str) -> list[str]:
    """``command`` run with the temporary directories read-only (:data:`READ_ONLY`)."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", READ_ONLY, "-", *command]


def _read_only_namespaces() -> bool:
    """Whether this machine lets the test make the temporary directories read-only."""
    try:
        done = subprocess.run(in_read_only("true"), capture_output=True, timeout=30)
    except OSError:
        return False
    return done.returncode == 0


@pytest.mark.skipif(
    not _read_only_namespaces(),
    reason="needs `unshare -m` and bind mounts (root or user namespaces) to make the "
    "temporary directories read-only",
)
@pytest.mark.parametrize("process", [["worker", "examples.quickstart"], ["ingress"]])
def test_a_process_with_no_writable_temporary_directory_stops_at_its_start(
    process: list[str],
) -> None:
    """A worker's partitions spill, and so does an ingress's admin index: both find out at
    their start, not once a spill outgrows its cache."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("SQLITE_TMPDIR", None)
    env.pop("TMPDIR", None)
    command = [sys.executable, "-m", "streams.cli", *process,
               "--bootstrap-servers", "127.0.0.1:9"]  # fmt: skip
    done = subprocess.run(in_read_only(*command), capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = done.stderr
    assert "kourier: error: cannot write a temporary file for the spills" in said, said
    assert "TMPDIR" in done.stderr
