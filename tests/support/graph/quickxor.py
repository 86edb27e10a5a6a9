"""quickXorHash, the only content hash SharePoint / OneDrive for Business report.

Definition (protocol note, section 7): byte ``i`` of the stream is XORed into a
160-bit accumulator at bit offset ``(11 * i) % 160`` (wrapping), the accumulator is
serialised little-endian and the total length (64-bit little-endian) is XORed into
bytes 12..19. Because the offset only depends on ``i % 160`` we keep 160 "lanes"
(the XOR of every byte whose index is ``k mod 160``) and rotate each lane into
place once at the end.

The fake server hashes tens of thousands of generated files for benchmarks, so
lanes are folded with big-int XORs (C speed) instead of a per-byte Python loop.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

_WIDTH = 160  # lanes, one per byte position modulo 160
_BLOCK_BITS = _WIDTH * 8
_MASK160 = (1 << 160) - 1
_MAX_CHUNK = 1 << 20  # bound temporary big ints when fed huge buffers


def _fold(value: int, blocks: int) -> int:
    """XOR together ``blocks`` consecutive 160-byte blocks packed in ``value``."""
    while blocks > 1:
        half = blocks // 2
        bits = half * _BLOCK_BITS
        value = (value & ((1 << bits) - 1)) ^ (value >> bits)
        blocks -= half
    return value


class QuickXorHash:
    """Incremental quickXorHash (``update`` any number of times, then ``b64digest``)."""

    __slots__ = ("_lanes", "_length")

    def __init__(self, data: bytes = b"") -> None:
        self._lanes = 0
        self._length = 0
        if data:
            self.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes; chunk boundaries do not affect the result."""
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _MAX_CHUNK):
            part = view[start : start + _MAX_CHUNK]
            lead = self._length % _WIDTH
            buf = bytes(lead) + part.tobytes()
            buf += bytes(-len(buf) % _WIDTH)
            self._lanes ^= _fold(int.from_bytes(buf, "little"), len(buf) // _WIDTH)
            self._length += len(part)

    def digest(self) -> bytes:
        """The 20-byte hash of everything fed so far."""
        acc = 0
        for k, lane in enumerate(self._lanes.to_bytes(_WIDTH, "little")):
            if lane:
                shifted = lane << ((11 * k) % 160)
                acc ^= (shifted | (shifted >> 160)) & _MASK160
        out = bytearray(acc.to_bytes(20, "little"))
        for j, byte in enumerate(self._length.to_bytes(8, "little")):
            out[12 + j] ^= byte
        return bytes(out)

    def b64digest(self) -> str:
        """Base64 form, as Graph reports it in ``file.hashes.quickXorHash``."""
        return base64.b64encode(self.digest()).decode("ascii")


def quickxor_b64(chunks: Iterable[bytes] | bytes) -> str:
    """Hash ``bytes`` or an iterable of chunks and return the base64 digest."""
    h = QuickXorHash()
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        h.update(chunks)
    else:
        for chunk in chunks:
            h.update(chunk)
    return h.b64digest()
