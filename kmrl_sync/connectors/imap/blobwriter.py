"""Mail content into the blob store on a small thread pool, while the caller goes on parsing.

Hashing and writing a blob release the GIL for their longer parts (sha256 of more than 2 KB, the
write of the content), so a pool of two threads takes some of that off the parsing thread. Each
document is complete (version, sha256, size, blob URI filled in) once `wait()` has returned; the
engine's `blobs.flush()` then makes the blobs durable before the commit that points at them.

A store that cannot take content (full, read-only) raises BlobWriteError from `put` or `wait`,
which fails the run: no batch pointing at missing content is committed.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from kmrl_sync.content.store import ContentStore
from kmrl_sync.engine.documents import Upsert

# Content handed over but not yet written is held in memory: at most this many blobs and bytes
# (one blob may be larger; it then waits for everything before it).
MAX_PENDING_WRITES = 256
MAX_PENDING_BYTES = 32 << 20


class BlobWriter:
    def __init__(self, blobs: ContentStore, threads: int = 2):
        self.blobs = blobs
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imap-blobs")
        self._pending: deque[tuple[Future[Any], int]] = deque()
        self._pending_bytes = 0

    def put(self, data: bytes, upsert: Upsert) -> None:
        """Store `data` in the background; `upsert` gets its version, sha256, size and blob URI then."""
        while self._pending and (len(self._pending) >= MAX_PENDING_WRITES
                                 or self._pending_bytes + len(data) > MAX_PENDING_BYTES):
            future, size = self._pending.popleft()
            self._pending_bytes -= size
            future.result()
        self._pending.append((self._pool.submit(self._store, data, upsert), len(data)))
        self._pending_bytes += len(data)

    def _store(self, data: bytes, upsert: Upsert) -> None:
        ref = self.blobs.put_bytes(data)
        upsert.stored_as(ref.sha256, ref.size, ref.uri)

    def wait(self) -> None:
        """Every write submitted so far is in the store (not yet synced: the engine's flush does that).

        All of them are waited for even when one failed, so that none is still running; the first
        failure is then raised.
        """
        pending, self._pending, self._pending_bytes = self._pending, deque(), 0
        failure: BaseException | None = None
        for future, _size in pending:
            exc = future.exception()
            failure = failure or exc
        if failure is not None:
            raise failure

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
