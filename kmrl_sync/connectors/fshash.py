"""Reading and hashing files, importable on its own by worker processes.

Kept free of the rest of kmrl_sync (pydantic, redis, ...) so a worker process starts in
milliseconds: it only needs `os` and `hashlib`. The walking process sends paths with the size the
walk saw; a worker answers `(sha256 hex, bytes read, "")`, `(None, 0, "")` for a file that
vanished, or `(None, errno, message)` for one it could not read.
"""

from __future__ import annotations

import hashlib
import os

READ_WHOLE = 4 << 20  # files up to this size are read in one call
CHUNK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)

Digest = tuple[str | None, int, str]


def _rest(fd: int, hasher, size: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def digest_file(path: str, expected_size: int) -> Digest:
    # os.open/os.read, not open(): no buffered-file objects on a path run 100,000 times.
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None, 0, ""
    except OSError as exc:
        return None, exc.errno or 0, exc.strerror or str(exc)
    try:
        if expected_size < READ_WHOLE:
            # One read of size+1 bytes: a short read proves end of file without another syscall.
            data = os.read(fd, expected_size + 1)
            if len(data) <= expected_size:
                return hashlib.sha256(data).hexdigest(), len(data), ""
            return (*_rest(fd, hashlib.sha256(data), len(data)), "")
        return (*_rest(fd, hashlib.sha256(), 0), "")
    except OSError as exc:
        return None, exc.errno or 0, exc.strerror or str(exc)
    finally:
        os.close(fd)


def digest_files(items: list[tuple[str, int]]) -> list[Digest]:
    return [digest_file(path, size) for path, size in items]
