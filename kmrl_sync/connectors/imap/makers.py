"""Where mails become documents: in this process, or in worker processes for big fetches.

Parsing MIME and writing blobs is CPU and disk work that Python runs on one core. For an initial
sync (thousands of mails) a pool of worker processes does it while this process keeps fetching and
committing; each worker writes the blobs itself and makes them durable (its own `flush()`) before
returning, so every blob a batch points at is on disk before the engine commits that batch. Small
fetches, and machines with fewer than four CPUs, stay in-process (see `default_processes`).

Results come back in submission order; `collect(block=False)` takes what is ready without waiting.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.connectors.imap.blobwriter import BlobWriter
from kmrl_sync.connectors.imap.mails import MailSource, mail_documents
from kmrl_sync.content import open_store
from kmrl_sync.content.store import Cipher, ContentStore
from kmrl_sync.engine.documents import Failure, Upsert

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

POOL_THRESHOLD = 300  # mails to fetch in a folder before worker processes pay off
MAX_IN_FLIGHT = 3  # chunks submitted but not collected: bounds memory


@dataclass(slots=True)
class Job:
    raw: bytes
    doc_id: str
    message_id: str | None
    source: MailSource
    internal: datetime | None
    context: Any = None  # the caller's bookkeeping, not sent to workers


Result = tuple[list[Upsert], list[Failure]]


def _make(jobs: list[tuple[bytes, str, str | None, MailSource, datetime | None]], writer: BlobWriter,
          attachments: bool, max_bytes: int) -> list[Result]:
    return [mail_documents(raw, doc, mid, source, internal, writer, attachments=attachments,
                           max_attachment_bytes=max_bytes) for raw, doc, mid, source, internal in jobs]


# --------------------------------------------------------------------------- worker process side

_worker: dict[str, Any] = {}


def _init_worker(settings: StoreSettings, cipher: Cipher | None) -> None:
    store = open_store(settings, cipher)  # the parent's store, reopened: folder or bucket, same cipher
    _worker["store"] = store
    _worker["writer"] = BlobWriter(store)


def _worker_make(jobs: list[Any], attachments: bool, max_bytes: int) -> list[Result]:
    out = _make(jobs, _worker["writer"], attachments, max_bytes)
    _worker["writer"].wait()
    _worker["store"].flush()  # durable before the parent commits a batch pointing at these blobs
    return out


# --------------------------------------------------------------------------- parent side


class DocumentMaker:
    def __init__(self, blobs: ContentStore, writer: BlobWriter, *, attachments: bool, max_bytes: int,
                 processes: int = 0):
        self.blobs = blobs
        self.writer = writer
        self.attachments = attachments
        self.max_bytes = max_bytes
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            import multiprocessing  # only with workers: 12 ms of every incremental sync otherwise
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(blobs.settings, blobs.cipher))
        self._queue: deque[tuple[list[Job], Future[list[Result]] | list[Result]]] = deque()
        self.pending_jobs = 0

    @staticmethod
    def default_processes() -> int:
        """Workers only where they get a core of their own: this process and the disk need two.

        Measured on a busy 2-CPU machine, a worker brought nothing (it competes with the fetching
        process and the kernel's writeback) and cost 20 MB more peak RSS; see bench/imap/README.md.
        """
        cpus = os.cpu_count() or 1
        return min(4, cpus - 2) if cpus >= 4 else 0

    def submit(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        payload = [(j.raw, j.doc_id, j.message_id, j.source, j.internal) for j in jobs]
        if self._pool is None:
            self._queue.append((jobs, _make(payload, self.writer, self.attachments, self.max_bytes)))
        else:
            while len(self._queue) >= MAX_IN_FLIGHT:
                self._queue[0][1].result()  # type: ignore[union-attr]  # back-pressure only
                break
            self._queue.append((jobs, self._pool.submit(_worker_make, payload, self.attachments,
                                                        self.max_bytes)))
        self.pending_jobs += len(jobs)

    def collect(self, block: bool = True) -> list[tuple[Job, Result]]:
        out: list[tuple[Job, Result]] = []
        while self._queue:
            jobs, pending = self._queue[0]
            if isinstance(pending, Future):
                if not block and not pending.done():
                    break
                results = pending.result()
            else:
                results = pending
            self._queue.popleft()
            self.pending_jobs -= len(jobs)
            out.extend(zip(jobs, results, strict=True))
        return out

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=True, cancel_futures=True)
