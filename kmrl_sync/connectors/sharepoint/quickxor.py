"""quickXorHash: the only content hash SharePoint and OneDrive for Business report.

Byte `i` of the stream is XORed into a 160-bit accumulator at bit offset `(11 * i) % 160`
(wrapping); the accumulator is serialised little-endian and the total length (64-bit LE) is
XORed into bytes 12..19 (protocol note, section 7). Because the offset depends only on
`i % 160`, we keep 160 "lanes" (the XOR of every byte whose index is `k mod 160`) as one big
int and fold whole 160-byte blocks with big-int XORs, which runs at C speed: downloads are
hashed while they stream, so a per-byte Python loop would make us CPU-bound.
"""

from __future__ import annotations

import base64
from operator import itemgetter

_WIDTH = 160
_BLOCK_BITS = _WIDTH * 8
_MASK160 = (1 << 160) - 1
_MAX_CHUNK = 1 << 20  # bounds the temporary big ints when fed huge buffers


def _groups() -> list[tuple[int, itemgetter]]:
    """Lane k lands at bit 11k mod 160 = 8q + r. For a fixed r the 20 lanes have distinct q, so
    they form one 20-byte little-endian int shifted by r: eight big-int XORs instead of 160."""
    out = []
    for r in range(8):
        lanes = sorted((k for k in range(_WIDTH) if (11 * k) % 160 % 8 == r), key=lambda k: (11 * k) % 160)
        out.append((r, itemgetter(*lanes)))
    return out


_GROUPS = _groups()


def _fold(value: int, blocks: int) -> int:
    """XOR together `blocks` consecutive 160-byte blocks packed little-endian in `value`."""
    while blocks > 1:
        half = blocks // 2
        bits = half * _BLOCK_BITS
        value = (value & ((1 << bits) - 1)) ^ (value >> bits)
        blocks -= half
    return value


class QuickXorHash:
    """Incremental hash: `update()` any number of times, then `b64digest()`."""

    __slots__ = ("_lanes", "_length")

    def __init__(self) -> None:
        self._lanes = 0
        self._length = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _MAX_CHUNK):
            part = view[start : start + _MAX_CHUNK]
            buf = bytes(self._length % _WIDTH) + part.tobytes()
            buf += bytes(-len(buf) % _WIDTH)
            self._lanes ^= _fold(int.from_bytes(buf, "little"), len(buf) // _WIDTH)
            self._length += len(part)

    def digest(self) -> bytes:
        """Rotate each lane to bit offset 11k mod 160, eight lanes-groups at a time (see _GROUPS)."""
        lanes = self._lanes.to_bytes(_WIDTH, "little")
        acc = 0
        for shift, pick in _GROUPS:
            acc ^= int.from_bytes(bytes(pick(lanes)), "little") << shift
        acc = (acc ^ (acc >> 160)) & _MASK160  # wrap the at most 7 bits that ran past bit 159
        acc ^= (self._length & 0xFFFFFFFFFFFFFFFF) << 96  # length, little-endian, into bytes 12..19
        return acc.to_bytes(20, "little")

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


def quickxor_b64(data: bytes) -> str:
    h = QuickXorHash()
    h.update(data)
    return h.b64digest()
