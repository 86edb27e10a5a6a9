"""Content-addressed blob store for content workers cannot fetch themselves.

Blobs are written to a temporary name and renamed into `sha256/ab/<digest>`, so a reader never
sees a partial blob and writing the same content twice is free. Durability is batched: instead of
one fsync per file, `flush()` syncs the whole filesystem once (syncfs) before the commit that points
at the new blobs, which is what makes "a crash at any instant loses nothing" hold for content too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str
    size: int
    path: Path


@functools.cache
def _syncfs():  # ctypes costs ~30 ms to import: only pay it when a blob was actually written
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def _discarded_on_error(tmp: str, fd: int) -> Iterator[None]:
    """Close the temporary file; remove it too if writing it failed."""
    try:
        yield
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self._objects = os.path.join(root, "sha256")
        self._tmp = os.path.join(root, "tmp")
        self._written = 0  # blobs written, ever (a sequence number for flushes)
        self._synced = 0  # value of _written that the last completed sync covered
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._ready = False
        self._tmp_names = itertools.count()

    def _location(self, digest: str) -> str:
        # One level of 256 folders: a second level would create a folder for almost every new blob
        # (65,536 of them), which costs more than the blob itself on a cold store.
        return f"{self._objects}/{digest[:2]}/{digest}"

    def _prepare(self) -> None:
        """Create the 256 fan-out folders once, instead of checking for one on every write."""
        if not self._ready:
            os.makedirs(self._tmp, exist_ok=True)
            for i in range(256):
                os.makedirs(f"{self._objects}/{i:02x}", exist_ok=True)
            self._ready = True

    def _new_tmp(self) -> tuple[str, int]:
        self._prepare()
        name = f"{self._tmp}/{os.getpid()}-{id(self):x}-{threading.get_ident()}-{next(self._tmp_names)}"
        return name, os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)

    def _install(self, tmp: str, digest: str, size: int) -> BlobRef:
        # Content-addressed: replacing an existing blob puts identical bytes under the same name, so
        # no existence check is needed (a stat per blob costs more than the rare duplicate write),
        # and the rename is atomic: readers never see a partial blob.
        final = self._location(digest)
        os.replace(tmp, final)
        with self._lock:
            self._written += 1
        return BlobRef(digest, size, Path(final))

    def put_bytes(self, data: bytes) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        tmp, fd = self._new_tmp()
        with _discarded_on_error(tmp, fd):
            _write_all(fd, data)
        return self._install(tmp, digest, len(data))

    def put_chunks(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobRef:
        """Stream content in without holding it in memory; refuse more than max_size bytes."""
        tmp, fd = self._new_tmp()
        hasher, size = hashlib.sha256(), 0
        with _discarded_on_error(tmp, fd):
            for chunk in chunks:
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise BlobTooLarge(f"content exceeds {max_size} bytes")
                hasher.update(chunk)
                _write_all(fd, chunk)
        return self._install(tmp, hasher.hexdigest(), size)

    def put_file(self, source: Path | str, max_size: int | None = None) -> BlobRef:
        with open(source, "rb") as src:
            return self.put_chunks(iter(lambda: src.read(_CHUNK), b""), max_size=max_size)

    def flush(self) -> None:
        """Make every blob written before this call durable, with one filesystem sync.

        Runs of several connectors share the store: a flush returns only once a sync that started
        after this call's blobs were written has completed, whoever ran it.
        """
        with self._lock:
            target = self._written
        if self._synced >= target:
            return
        with self._flush_lock:
            if self._synced >= target:
                return  # another thread's sync, begun after our blobs were written, covered them
            with self._lock:
                covered = self._written
            fd = os.open(self.root, os.O_RDONLY)
            try:
                syncfs = _syncfs()
                if syncfs is None or syncfs(fd) != 0:
                    os.sync()
            finally:
                os.close(fd)
            self._synced = covered  # only ever written here, under _flush_lock


class BlobTooLarge(ValueError):
    pass
