"""File bodies for the fake drive: literal bytes or deterministic generated streams.

Benchmarks create ~50k files; holding their bytes would cost hundreds of MB, so a
generated body is described by ``(seed, index, size)`` and produced on demand from
one shared random block. Hashes are computed once and cached on the object.
"""

from __future__ import annotations

import functools
import random
import struct
from collections.abc import Iterator

from .quickxor import QuickXorHash

_CHUNK = 64 * 1024
_BLOCK = 64 * 1024  # shared random block that generated bodies are cut from
_HEADER = struct.Struct("<4sQQ")  # magic, seed, index: makes every body distinct


class Content:
    """A file body: knows its size, can stream any byte range, caches its hash."""

    size: int = 0

    def __init__(self) -> None:
        self._qxh: str | None = None

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` in chunks (``end`` defaults to size)."""
        raise NotImplementedError

    def read(self) -> bytes:
        """Whole body in memory (tests only; benchmarks should stream)."""
        return b"".join(self.iter_range())

    @property
    def quickxor(self) -> str:
        """base64 quickXorHash, computed lazily and cached."""
        if self._qxh is None:
            h = QuickXorHash()
            for chunk in self.iter_range():
                h.update(chunk)
            self._qxh = h.b64digest()
        return self._qxh


class BytesContent(Content):
    """Literal bytes given by a test."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = bytes(data)
        self.size = len(self._data)

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        for pos in range(start, end, _CHUNK):
            yield self._data[pos : min(pos + _CHUNK, end)]


@functools.lru_cache(maxsize=16)
def _random_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(_BLOCK)


class GeneratedContent(Content):
    """Deterministic pseudo-random body: a 20-byte header naming (seed, index), then
    bytes from a shared random block at an index-dependent rotation."""

    def __init__(self, seed: int, index: int, size: int) -> None:
        super().__init__()
        self.seed = seed
        self.index = index
        self.size = size

    def _byte_at_block(self, pos: int) -> int:
        return (pos + self.index * 7919) % _BLOCK

    def iter_range(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = self.size if end is None else min(end, self.size)
        header = _HEADER.pack(b"KMRL", self.seed, self.index)
        block = _random_block(self.seed)
        pos = start
        while pos < end:
            if pos < len(header):
                piece = header[pos : min(end, len(header))]
            else:
                off = self._byte_at_block(pos)
                n = min(end - pos, _BLOCK - off, _CHUNK)
                piece = block[off : off + n]
            yield piece
            pos += len(piece)
