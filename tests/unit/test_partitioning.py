import pytest

from streams.wire.partitioning import KeysOn, murmur2, partition_for, partition_of_key


# Vectors from Apache Kafka's own UtilsTest.testMurmur2.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_is_stable_and_in_range() -> None:
    seen = {partition_for(f"key-{i}", 8) for i in range(200)}
    assert seen == set(range(8))
    assert partition_for("user-1", 8) == partition_for(b"user-1", 8)


@pytest.mark.parametrize(("partition", "partitions"), [(0, 1), (2, 3), (7, 8), (5, 16)])
def test_keys_on_a_partition_all_hash_to_it_and_never_repeat(
    partition: int, partitions: int
) -> None:
    keys = KeysOn(partition, partitions)
    drawn = [next(keys) for _ in range(2_000)]
    assert {partition_of_key(key, partitions) for key in drawn} == {partition}
    assert len(set(drawn)) == len(drawn)
    assert all(len(key) == 32 and int(key, 16) >= 0 for key in drawn)


def test_keys_on_a_partition_draw_a_new_random_part_when_the_counter_runs_out() -> None:
    keys = KeysOn(0, 1)  # every counter value lands: 65,536 keys share a random part
    first = [next(keys) for _ in range(1 << 16)]
    following = next(keys)
    assert len({key[:28] for key in first}) == 1
    assert following[:28] != first[0][:28]
    assert following not in set(first)
