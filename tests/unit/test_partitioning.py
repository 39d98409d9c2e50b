import pytest

from streams.wire.partitioning import murmur2, partition_for


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
