"""A stand-in cipher for the content stores' encryption hook (content/crypto.py supplies the real one).

Not encryption: a header and every byte XORed, just enough that the stored bytes differ from the
plaintext, change size, and come back only through `decrypting`. Picklable (module-level class),
like the real one must be: worker processes reopen the store with it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import BinaryIO

HEADER = b"TESTCIPHER1\n"
_TABLE = bytes(b ^ 0x5A for b in range(256))


class XorCipher:
    def encrypt(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        yield HEADER
        for chunk in chunks:
            yield chunk.translate(_TABLE)

    def decrypting(self, raw: BinaryIO, sha256: str | None = None) -> BinaryIO:
        header = raw.read(len(HEADER))
        if header != HEADER:
            raise ValueError("not stored by XorCipher")
        return _Decrypting(raw)


class _Decrypting(io.RawIOBase):
    def __init__(self, raw: BinaryIO):
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data.translate(_TABLE)
        return len(data)

    def close(self) -> None:
        self.raw.close()
        super().close()
