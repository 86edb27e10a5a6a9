"""Overlap the three slow things of an initial sync: the network, the CPU and the disk.

`Prefetcher` runs the IMAP side (planning chunks, FETCH) on a thread of its own, one or two chunks
ahead of the parser: socket reads release the GIL, so the next chunk arrives while this one is
parsed. Blobs go to a `ContentWriter`, which fills in the document's version (the sha256) when
the blob is written: the blob helper process (`open_blob_writer`, see blob_helper.py) or, where it
cannot start and in worker processes, `BlobWriter`'s threads. `wait()` is called before every batch
is handed to the engine, whose `blobs.flush()` then makes them durable before the commit that
points at them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kmrl_sync.blobs import BlobStore
from kmrl_sync.documents import Upsert

if TYPE_CHECKING:
    from kmrl_sync.blob_helper import HelperBlobWriter

T = TypeVar("T")
MAX_PENDING_WRITES = 256


def warm_up(blobs: BlobStore) -> None:
    """Load the MIME parser and prepare the blob store on a thread, while the caller waits for the
    server (EXAMINE, SEARCH, the first FETCH): about 15 ms of an incremental sync otherwise spent
    after the mail has arrived."""

    def run() -> None:
        import kmrl_sync.connectors.imap.makers  # noqa: F401  (the parser, email.policy, ...)

        blobs.warm_up()

    threading.Thread(target=run, name="imap-warm-up", daemon=True).start()


class ContentWriter(Protocol):
    """Stores blobs in the background and fills in the documents that point at them."""

    def put(self, data: bytes, upsert: Upsert) -> None: ...
    def bound_memory(self) -> None: ...
    def wait(self) -> None: ...
    def close(self) -> None: ...


class BlobWriter:
    def __init__(self, blobs: BlobStore, threads: int = 2):
        self.blobs = blobs
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="imap-blobs")
        self._pending: list[Future[Any]] = []

    def put(self, data: bytes, upsert: Upsert) -> None:
        """Store `data` in the background; `upsert` gets its version, sha256, size and blob URI then.

        Hashing happens on the worker too (hashlib releases the GIL), so the parsing thread never
        waits for it; the document is complete once `wait()` returned.
        """
        if len(self._pending) >= MAX_PENDING_WRITES:  # bound the bytes held in memory
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._store, data, upsert))

    def _store(self, data: bytes, upsert: Upsert) -> None:
        ref = self.blobs.put_bytes(data)
        upsert.stored_as(ref.sha256, ref.size, ref.uri)

    def bound_memory(self) -> None:
        """Called between chunks of mail: the content still waiting in memory is written first."""
        self.wait()

    def wait(self) -> None:
        """Every write submitted so far is on disk (not yet synced: the engine's flush does that)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def open_blob_writer(blobs: BlobStore, started: HelperBlobWriter | None = None) -> ContentWriter:
    """A blob helper process (see blob_helper.py), falling back to writer threads.

    `started`: a helper started for this store during start-up (early.py), used when it can be.
    """
    from kmrl_sync.blob_helper import HelperBlobWriter

    def fallback() -> BlobWriter:
        return BlobWriter(blobs)

    if started is not None:
        if started.adopt(blobs, fallback):
            return started
        started.close()
    return HelperBlobWriter(blobs, fallback=fallback)


class Prefetcher:
    """Iterate `produce()` on a background thread, at most `depth` items ahead of the consumer.

    Exceptions of the producer are re-raised in the consumer, in order. Closing the iterator early
    stops the producer after its current item.
    """

    def __init__(self, produce: Callable[[], Iterator[T]], depth: int = 2):
        self._produce = produce
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._produce():
                if not self._put(("item", item)):
                    return
            self._put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(("error", exc))

    def __iter__(self) -> Iterator[T]:
        thread = threading.Thread(target=self._run, name="imap-fetch", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = self._queue.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self._stop.set()
            thread.join()
