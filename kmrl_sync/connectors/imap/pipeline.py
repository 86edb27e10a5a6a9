"""Overlap the network with the CPU: the IMAP side of a sync runs ahead of the parser.

`Prefetcher` runs the IMAP side (planning chunks, FETCH) on a thread of its own, one or two chunks
ahead of the parser: socket reads release the GIL, so the next chunk arrives while this one is
parsed. (The disk side overlaps too: blobs are written by `blobwriter.BlobWriter`'s threads.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


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
