"""A set of Kafka offsets, one bit each: which records of a delay partition are pending.

A delay partition can hold a million messages due in hours (``streams.engine.delay``), and
``Fired`` markers name the offsets they release. As one bit per offset from the lowest
member up, the set costs an eighth of a byte per offset in its span, answers membership
without hashing, and lists its members in order by scanning for non-zero bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_NONZERO = re.compile(rb"[^\x00]")


class OffsetSet:
    """A set of offsets at or above ``base``, one bit each, from the lowest member up."""

    def __init__(self, base: int) -> None:
        self._base = base
        self._bits = bytearray()
        self._low = 0  # every byte before this one is zero
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, offset: int) -> bool:
        index = offset - self._base
        byte = index >> 3
        return index >= 0 and byte < len(self._bits) and bool(self._bits[byte] >> (index & 7) & 1)

    def add(self, offset: int) -> None:
        index = offset - self._base
        if index < 0:
            raise ValueError(f"offset {offset} below the set's base {self._base}")
        if self._count == 0 and index >> 3 >= len(self._bits):
            # Empty, and past the bitmap: it starts here. A partition read from 0 whose
            # first record is at offset 10^9 (the rest deleted) costs no 125 MB of zeros.
            self._base, self._bits, self._low, index = offset, bytearray(), 0, 0
        byte = index >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits)))
        mask = 1 << (index & 7)
        if not self._bits[byte] & mask:
            self._bits[byte] |= mask
            self._count += 1
            self._low = min(self._low, byte)

    def discard(self, offset: int) -> bool:
        """Remove ``offset``; whether it was a member."""
        if offset not in self:
            return False
        index = offset - self._base
        self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
        self._count -= 1
        return True

    def below(self, limit: int) -> Iterator[int]:
        """The members below ``limit``, lowest first (do not change the set meanwhile)."""
        end = min(len(self._bits), (limit - self._base + 7) >> 3)
        for found in _NONZERO.finditer(self._bits, self._low, max(self._low, end)):
            byte = found.start()
            value = self._bits[byte]
            for bit in range(8):
                if value >> bit & 1:
                    offset = self._base + 8 * byte + bit
                    if offset >= limit:
                        return
                    yield offset

    def lowest(self) -> int | None:
        found = _NONZERO.search(self._bits, self._low)
        if found is None:
            # Keep the last byte: offsets added later may share it.
            self._low = max(0, len(self._bits) - 1)
            self._trim()
            return None
        self._low = found.start()
        self._trim()
        value = self._bits[self._low]
        return self._base + 8 * self._low + (value & -value).bit_length() - 1

    def _trim(self) -> None:
        """Drop the leading zero bytes once they are most of the bitmap."""
        if self._low >= 4096 and 2 * self._low >= len(self._bits):
            del self._bits[: self._low]
            self._base += 8 * self._low
            self._low = 0
