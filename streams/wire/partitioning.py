"""Kafka's default partitioner (murmur2), so that every Kourier producer, in any
language, puts one object key on one partition."""

from __future__ import annotations

import secrets
from functools import lru_cache

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit hash as a signed Java int."""
    length = len(data)
    end = length - (length & 3)
    return _finish(_blocks(_seed(length), data, end), data, end)


def _seed(length: int) -> int:
    return (0x9747B28C ^ length) & _MASK


def _blocks(h: int, data: bytes, end: int) -> int:
    """``h`` after mixing in the 4-byte blocks of ``data[:end]``."""
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    return h


def _finish(h: int, data: bytes, end: int) -> int:
    """The hash, from ``h`` after the blocks and the 0-3 bytes of ``data`` from ``end``."""
    rest = len(data) - end
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of_key(key: str | bytes, partitions: int) -> int:
    """The partition that Kafka's Java producer and librdkafka's ``murmur2_random`` pick."""
    raw = key.encode() if isinstance(key, str) else key
    return _partition(murmur2(raw), partitions)


def _partition(hash_: int, partitions: int) -> int:
    """The partition of a murmur2 hash, as Kafka's default partitioner picks it."""
    return (hash_ & 0x7FFFFFFF) % partitions


#: Characters of the longest key whose hash is remembered: object keys repeat, and murmur2
#: in Python costs microseconds, but a cache keeps its keys, and 65,536 keys of 4,096
#: characters pinned up to a gigabyte, for good.
CACHED_KEY = 64


def key_hash(key: str | bytes) -> int:
    """``key``'s murmur2 hash as the partitioner reads it (its sign bit cleared): what an
    object key routes by, in partitions and in invocation ids. Remembered for short keys;
    keys used once (request ids) go to :func:`partition_of_key` instead."""
    if len(key) <= CACHED_KEY:
        return _remembered(key)
    return _key_hash(key)


def _key_hash(key: str | bytes) -> int:
    return murmur2(key.encode() if isinstance(key, str) else key) & 0x7FFFFFFF


_remembered = lru_cache(maxsize=65_536)(_key_hash)


def partition_for(key: str | bytes, partitions: int) -> int:
    """:func:`partition_of_key`, by the remembered :func:`key_hash`."""
    return key_hash(key) % partitions


class KeysOn:
    """Fresh keys, 32 hex digits like a UUID's, that all land on one partition (request
    ids that must come back to the response partition their client reads).

    A key is 28 random hex digits and a 4-digit counter. murmur2 mixes a key in 4-byte
    blocks, so the hash state after the random part is computed once, and each counter
    value costs one block and the finish: about one in ``partitions`` of them lands on
    ``partition``. A fresh random part follows when the counter runs out."""

    _LENGTH = 32
    _PREFIX = 28

    def __init__(self, partition: int, partitions: int) -> None:
        self._partition = partition
        self._partitions = partitions
        self._counter = 1 << 16  # exhausted: the first key draws a random part

    def __next__(self) -> str:
        while True:
            if self._counter >= 1 << 16:
                self._prefix = secrets.token_hex(self._PREFIX // 2).encode()
                self._state = _blocks(_seed(self._LENGTH), self._prefix, self._PREFIX)
                self._counter = 0
            suffix = b"%04x" % self._counter
            self._counter += 1
            h = _finish(_blocks(self._state, suffix, 4), b"", 0)
            if _partition(h, self._partitions) == self._partition:
                return (self._prefix + suffix).decode()
