import tracemalloc

import pytest

from streams.wire import ids
from streams.wire.partitioning import murmur2, partition_for, partition_of_key


def test_keyed_ids_route_to_the_keys_partition() -> None:
    for n in (1, 4, 8, 13):
        for key in ("alice", "bob", "", "ключ"):
            assert ids.partition_of(ids.new_id(key, n), n) == partition_for(key, n)
            assert ids.partition_of(ids.keyed_id(key, "seed"), n) == partition_for(key, n)


def test_unkeyed_ids_land_where_asked_and_are_deterministic() -> None:
    for partition in range(8):
        made = ids.id_on_partition(partition, 8, seed=f"ns/ingress/{partition}/42")
        assert ids.partition_of(made, 8) == partition
        assert made == ids.id_on_partition(partition, 8, seed=f"ns/ingress/{partition}/42")


def test_child_ids_are_stable_across_replays() -> None:
    parent = ids.new_id(None, 8)
    assert ids.child_id(parent, 3, "k", 8) == ids.child_id(parent, 3, "k", 8)
    assert ids.child_id(parent, 3, "k", 8) != ids.child_id(parent, 4, "k", 8)
    assert ids.partition_of(ids.child_id(parent, 3, "k", 8), 8) == partition_for("k", 8)


@pytest.mark.parametrize(
    "bad",
    ["", "inv_", "inv_xyz", "abc_" + "0" * 32, "inv_" + "0" * 31, "inv_" + "0" * 32 + "\n"],
)
def test_malformed_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ids.InvalidId, match="not a Kourier invocation id"):
        ids.partition_of(bad, 8)


def test_a_later_run_under_an_id_derives_other_child_and_timer_ids() -> None:
    parent = ids.new_id("k", 8)
    first, second = ids.run_of(parent, 10, 1e9), ids.run_of(parent, 42, 1e9 + 5)
    # A call run in its caller's transaction takes the next offset without writing a
    # record: a run under the same id made later the same way may take the same one.
    assert ids.run_of(parent, 10, 1e9) != ids.run_of(parent, 10, 1e9 + 0.001)
    assert ids.child_id(first, 3, "k", 8) == ids.child_id(first, 3, "k", 8)
    assert ids.child_id(first, 3, "k", 8) != ids.child_id(second, 3, "k", 8)
    assert ids.child_id(first, 3, None, 8) != ids.child_id(second, 3, None, 8)
    assert ids.timer_id(first, 3) == ids.timer_id(first, 3)
    assert ids.timer_id(first, 3) not in (ids.timer_id(second, 3), ids.timer_id(first, 4))
    assert ids.is_id(ids.timer_id(first, 3)), "a timer's completion carries it as an id"


def test_long_keys_are_hashed_without_being_kept() -> None:
    """The hashes' cache held every key it was asked, up to 65,536 of them: keys of 4,096
    characters past the BMP (16 KiB each in Python) pinned a gigabyte."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        long_keys = [f"{n:04d}" + "k" * 196 for n in range(500)]  # 100 KB
        hashed = sum(ids.key_hash(key) for key in long_keys)
        expected = sum(murmur2(key.encode()) & 0x7FFFFFFF for key in long_keys)
        routed = sum(partition_for(key, 8) for key in long_keys)
        routed_as = sum(partition_of_key(key, 8) for key in long_keys)
        del long_keys
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert (hashed, routed) == (expected, routed_as)
    assert kept < 20_000, f"{kept} bytes kept after hashing 100 KB of keys"
    assert ids.key_hash("short") == murmur2(b"short") & 0x7FFFFFFF
