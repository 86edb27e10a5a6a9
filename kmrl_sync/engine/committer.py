"""Commits one batch in the background while the connector produces the next.

Redis runs the commit script on the other core; waiting for it in the connector's thread would
leave that time unused. At most one batch is in flight and batches commit strictly in order, so
the cursor semantics are unchanged: when `submit(k)` returns, batches before k are committed.
Connectors opt in (`Connector.pipelined_commits`) when nothing they do after a `yield` depends on
that batch being committed already.

A commit is split in two: `prepare` (building the script's arguments: pure Python) runs in the
submitting thread *before* waiting for the previous batch, so it overlaps Redis executing that
batch; `commit` (flush blobs, send, wait) runs in the background. Preparing in the commit thread
instead left Redis idle for the whole preparation of every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from kmrl_sync.engine.documents import Batch

P = TypeVar("P")
R = TypeVar("R")


class InlineCommitter(Generic[P, R]):
    def __init__(self, prepare: Callable[[Batch], P], commit: Callable[[P], R],
                 on_done: Callable[[Batch, R], None]):
        self._prepare = prepare
        self._commit = commit
        self._on_done = on_done

    def submit(self, batch: Batch) -> None:
        self._on_done(batch, self._commit(self._prepare(batch)))

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class BackgroundCommitter(Generic[P, R]):
    def __init__(self, prepare: Callable[[Batch], P], commit: Callable[[P], R],
                 on_done: Callable[[Batch, R], None]):
        self._prepare = prepare
        self._commit = commit
        self._on_done = on_done
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._in_flight: tuple[Batch, Future] | None = None

    def _wait(self) -> None:
        if self._in_flight is not None:
            batch, future = self._in_flight
            self._in_flight = None
            self._on_done(batch, future.result())  # re-raises the commit's exception here

    def submit(self, batch: Batch) -> None:
        prepared = self._prepare(batch)  # while the previous batch may still be executing
        self._wait()
        self._in_flight = (batch, self._pool.submit(self._commit, prepared))

    def drain(self) -> None:
        self._wait()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._pool.shutdown(wait=True)
