"""Reading and hashing files, importable on its own by worker processes.

Kept free of the rest of kmrl_sync (pydantic, redis, ...) so a worker process starts in
milliseconds: it only needs `os` and `hashlib`.

The file's metadata comes from `fstat` on the descriptor opened for reading, not from a stat
during the walk: the walk of a new tree then needs no stat at all (names and types come from the
directory listing), and `fstat` costs a third of a path `lstat`. A worker answers
`(sha256 hex, bytes read, "", meta)`, `(None, 0, "", None)` for a file that vanished,
`(None, errno, message, None)` for one it could not read, and `(None, 0, "", meta)` for one larger
than the cap it was given (not read at all). `meta` is `(size, mtime_ns, ctime_ns, inode, device)`.
"""

from __future__ import annotations

import hashlib
import os
import stat

READ_WHOLE = 4 << 20  # files up to this size are read in one call
CHUNK = 1 << 20
# O_NOFOLLOW: a file swapped for a symlink after the walk is not followed out of the root (symlinks
# the walk did follow arrive here as their resolved path); O_NONBLOCK: one swapped for a FIFO does
# not hang the open (it is then refused as not a regular file).
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

Meta = tuple[int, int, int, int, int]
Digest = tuple[str | None, int, str, Meta | None]


def _rest(fd: int, hasher, size: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def digest_file(path: str, max_size: int | None = None) -> Digest:
    # os.open/os.read, not open(): no buffered-file objects on a path run 100,000 times.
    try:
        fd = os.open(path, OPEN_FLAGS)
    except FileNotFoundError:
        return None, 0, "", None
    except OSError as exc:
        return None, exc.errno or 0, exc.strerror or str(exc), None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, 0, "not a regular file any more", None
        meta = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        size = st.st_size
        if max_size is not None and size > max_size:
            return None, 0, "", meta
        if size < READ_WHOLE:
            # One read of size+1 bytes: a short read proves end of file without another syscall.
            data = os.read(fd, size + 1)
            if len(data) <= size:
                return hashlib.sha256(data).hexdigest(), len(data), "", meta
            return (*_rest(fd, hashlib.sha256(data), len(data)), "", meta)
        return (*_rest(fd, hashlib.sha256(), 0), "", meta)
    except OSError as exc:
        return None, exc.errno or 0, exc.strerror or str(exc), None
    finally:
        os.close(fd)


def digest_files(paths: list[str], max_size: int | None = None) -> list[Digest]:
    return [digest_file(path, max_size) for path in paths]
