"""Content-addressed blob store for content workers cannot fetch themselves.

The layout and the writing of one file are in `blobfiles` (shared with the blob helper process).
Durability is batched: instead of one fsync per file, `flush()` syncs the whole filesystem once
(syncfs) before the commit that points at the new blobs, which is what makes "a crash at any
instant loses nothing" hold for content too. Content larger than `SPOOL_LIMIT` streams through
`tmp/` before its digest is known.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kmrl_sync import blobfiles
from kmrl_sync.blobfiles import BlobWriteError

__all__ = ["BlobRef", "BlobStore", "BlobTooLarge", "BlobWriteError"]

SPOOL_LIMIT = 4 << 20  # streamed content up to this size is hashed in memory before it is written


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str
    size: int
    path: Path  # where this process finds it
    uri: str  # what the document's `blob` field says: absolute, valid from any working directory


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


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        # Documents point at their content by an absolute file:// URI (DESIGN: a relative path would
        # mean something else in every other working directory). Resolved once: per blob it is
        # a string concatenation (digests need no quoting).
        self._uri_objects = Path(root).resolve().as_uri() + "/sha256"
        self._objects = os.path.join(root, "sha256")
        self._tmp = os.path.join(root, "tmp")
        self._written = 0  # blobs written, ever (a sequence number for flushes)
        self._synced = 0  # value of _written that the last completed sync covered
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._ready = False
        self._tmp_names = itertools.count()

    def _prepare(self) -> None:
        if not self._ready:
            try:
                blobfiles.make_folders(self._objects, self._tmp)
            except OSError as exc:
                raise blobfiles.os_failure(self.root, exc) from exc
            self._ready = True

    def warm_up(self) -> None:
        """Do now, on a thread that would otherwise wait, what the first write and flush would do."""
        self._prepare()
        _syncfs()

    @property
    def objects(self) -> str:
        """The folder of the fan-out folders (see blobfiles.blob_location)."""
        return self._objects

    def _unique(self) -> str:
        return f"{os.getpid()}-{id(self):x}-{threading.get_ident()}-{next(self._tmp_names)}"

    def record_written(self, count: int = 1) -> None:
        """Count blobs written into this store (also by a helper process): `flush()` covers them."""
        with self._lock:
            self._written += count

    def uri(self, digest: str) -> str:
        """The absolute `file://` URI of the blob with this digest (the documents' `blob` field)."""
        return f"{self._uri_objects}/{digest[:2]}/{digest}"

    def ref(self, digest: str, size: int) -> BlobRef:
        return BlobRef(digest, size, Path(blobfiles.blob_location(self._objects, digest)), self.uri(digest))

    def put_bytes(self, data: bytes) -> BlobRef:
        """Store `data`; raises BlobWriteError (naming the store, "disk full") when it cannot."""
        self._prepare()
        try:
            digest, _path = blobfiles.write_blob(self._objects, data, self._unique())
        except OSError as exc:
            raise blobfiles.os_failure(self.root, exc) from exc
        self.record_written()
        return self.ref(digest, len(data))

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
        self._prepare()
        tmp = f"{self._tmp}/{self._unique()}"
        try:
            fd = os.open(tmp, blobfiles.OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise blobfiles.os_failure(self.root, exc) from exc
        hasher, size = hashlib.sha256(), 0
        with blobfiles.discarded_on_error(tmp, fd):
            # Reading the source may fail too (that is the document's failure, raised as it is);
            # only a failed write is the store's.
            for chunk in itertools.chain(spooled, capped):
                hasher.update(chunk)
                try:
                    blobfiles.write_all(fd, chunk)
                except OSError as exc:
                    raise blobfiles.os_failure(self.root, exc) from exc
                size += len(chunk)
        digest = hasher.hexdigest()
        try:
            blobfiles.install(tmp, self._objects, digest)
        except OSError as exc:
            raise blobfiles.os_failure(self.root, exc) from exc
        self.record_written()
        return self.ref(digest, size)

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
            try:
                fd = os.open(self.root, os.O_RDONLY)
            except OSError as exc:
                raise blobfiles.os_failure(self.root, exc) from exc
            try:
                syncfs = _syncfs()
                if syncfs is None:
                    os.sync()
                elif syncfs(fd) != 0:
                    # Since Linux 5.8 syncfs reports write-back errors (EIO, ENOSPC): the content
                    # is not durable, so the commit that would point at it must not happen.
                    import ctypes

                    code = ctypes.get_errno()
                    if code in (errno.ENOSYS, errno.EINVAL):
                        os.sync()
                    else:
                        raise blobfiles.write_failure(self.root, code, os.strerror(code))
            finally:
                os.close(fd)
            self._synced = covered  # only ever written here, under _flush_lock


class BlobTooLarge(ValueError):
    pass
