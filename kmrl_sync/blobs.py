"""Content-addressed blob store for content workers cannot fetch themselves.

Blobs are written to a temporary name and renamed into `sha256/ab/<digest>`, so a reader never
sees a partial blob and writing the same content twice is free. The temporary file (`.tmp-...`, never
a 64-hex name) lives in the blob's own fan-out folder whenever the digest is known first: creating
every file in one shared `tmp/` folder and renaming it across folders serialised the writer threads
on that folder's lock and piled ext4's inode allocation into one block group (3x the kernel time
when a store is refilled after a wipe; bench/imap). Only content larger than `SPOOL_LIMIT` streams
through `tmp/` before its digest is known. Durability is batched: instead of
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

SPOOL_LIMIT = 4 << 20  # streamed content up to this size is hashed in memory before it is written


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str
    size: int
    path: Path


@functools.cache
def _syncfs():
    """libc's syncfs, looked up among the symbols already loaded (the interpreter links libc).

    Only loaded once a blob was written. ctypes.util.find_library would run `ldconfig -p` in a
    subprocess: 7 ms of every incremental one-shot sync.
    """
    import ctypes

    for library in (None, "libc.so.6"):
        try:
            return ctypes.CDLL(library, use_errno=True).syncfs
        except (OSError, AttributeError):
            continue
    return None


def _capped(chunks: Iterable[bytes], max_size: int | None) -> Iterator[bytes]:
    """The chunks, raising BlobTooLarge as soon as they add up to more than max_size bytes."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise BlobTooLarge(f"content exceeds {max_size} bytes")
        yield chunk


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def _discarded_on_error(tmp: str, fd: int) -> Iterator[None]:
    """Close the temporary file, its writeback started; remove it instead if writing it failed."""
    try:
        yield
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    _start_writeback(fd)
    os.close(fd)


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing the file out now, without waiting for it.

    `flush()` must make every blob durable before the commit that points at it. Left to the
    kernel, the data stays dirty until then and the sync writes all of it while the commit waits
    (57 ms for a 500-mail IMAP batch here); started at once, it is written while the rest of the
    batch is made. POSIX_FADV_DONTNEED starts writeback of dirty pages and drops only clean ones,
    and a just-written page is dirty or under writeback, so the content stays cached for the
    workers (checked with fincore).
    """
    with contextlib.suppress(AttributeError, OSError):  # not here: flush() still syncs everything
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


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

    def warm_up(self) -> None:
        """Do now, on a thread that would otherwise wait, what the first write and flush would do."""
        self._prepare()
        _syncfs()

    def _new_tmp(self, folder: str | None = None) -> tuple[str, int]:
        """A temporary file in `folder` (the blob's fan-out folder), else in the shared `tmp/`."""
        self._prepare()
        unique = f"{os.getpid()}-{id(self):x}-{threading.get_ident()}-{next(self._tmp_names)}"
        name = f"{folder}/.tmp-{unique}" if folder else f"{self._tmp}/{unique}"
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
        tmp, fd = self._new_tmp(f"{self._objects}/{digest[:2]}")
        with _discarded_on_error(tmp, fd):
            _write_all(fd, data)
        return self._install(tmp, digest, len(data))

    def put_chunks(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobRef:
        """Stream content in (held in memory only up to SPOOL_LIMIT); refuse more than max_size bytes."""
        capped = _capped(chunks, max_size)
        spooled: list[bytes] = []
        size = 0
        for chunk in capped:
            spooled.append(chunk)
            size += len(chunk)
            if size > SPOOL_LIMIT:
                break
        else:
            return self.put_bytes(b"".join(spooled))
        tmp, fd = self._new_tmp()
        hasher, size = hashlib.sha256(), 0
        with _discarded_on_error(tmp, fd):
            for chunk in itertools.chain(spooled, capped):
                hasher.update(chunk)
                _write_all(fd, chunk)
                size += len(chunk)
        return self._install(tmp, hasher.hexdigest(), size)

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
