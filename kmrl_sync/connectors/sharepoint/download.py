"""File content into the blob store: bounded parallel downloads, size cap, quickXorHash check.

A page's downloads run on a small thread pool (`download_concurrency`) so a library of small
files is limited by the server, not by round-trip latency; results come back in page order.
A hash or size mismatch is logged, never a failure: SharePoint "enrichment" rewrites some
Office/PDF files so the served bytes differ from the reported hash (rclone #2599).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kmrl_sync.content.store import BlobRef, BlobTooLarge, ContentStore

from .http import GraphError, GraphHttp
from .quickxor import QuickXorHash


@dataclass(slots=True)
class Job:
    item_id: str
    content_url: str  # Graph /content (bearer, 302 to the download host)
    download_url: str | None  # pre-authenticated URL from the delta item; never stored or logged
    quickxor: str
    size: int
    label: str  # path, for logs


@dataclass(slots=True)
class Fetched:
    blob: BlobRef
    quickxor: str


class Downloader:
    def __init__(self, http: GraphHttp, blobs: ContentStore, *, max_bytes: int | None, concurrency: int,
                 log: Any):
        self.http = http
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.log = log
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="sp-download")

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _one(self, job: Job) -> Fetched | str:
        """Fetched, or an error message for this item alone (ConnectorError propagates)."""
        def consume(chunks: Iterator[bytes]) -> Fetched:
            qxh = QuickXorHash()

            def hashed() -> Iterator[bytes]:
                for chunk in chunks:
                    qxh.update(chunk)
                    yield chunk

            ref = self.blobs.put_chunks(hashed(), max_size=self.max_bytes)
            return Fetched(ref, qxh.b64digest())

        try:
            got: Fetched = self.http.download(job.content_url, job.download_url, consume)
        except BlobTooLarge:
            return f"larger than max_file_mb ({self.max_bytes} bytes)"
        except GraphError as exc:
            what = {403: "access denied", 404: "not found"}.get(exc.status, f"HTTP {exc.status}")
            return f"cannot download content: {what} ({exc.code})"
        if job.quickxor and got.quickxor != job.quickxor:
            self.log.warning("content differs from the quickXorHash Graph reported (SharePoint may have "
                             "rewritten it); keeping the served bytes", path=job.label,
                             expected=job.quickxor, got=got.quickxor)
        elif job.size and got.blob.size != job.size:
            self.log.warning("content size differs from Graph's", path=job.label, expected=job.size,
                             got=got.blob.size)
        return got

    def fetch_all(self, jobs: list[Job]) -> list[Fetched | str]:
        """Results in job order. Each worker pulls the next index from a shared counter: one
        future per worker, not per file (pool.map's per-item futures and condition variables
        cost as much CPU as an http.client GET). The first exception (ConnectorError,
        StopRequested) stops the other workers taking work and is re-raised."""
        if not jobs:
            return []
        if len(jobs) == 1:
            return [self._one(jobs[0])]
        results: list[Fetched | str | None] = [None] * len(jobs)
        ticket = itertools.count()  # next() is atomic under the GIL
        failed = threading.Event()

        def work() -> None:
            for i in iter(ticket.__next__, None):
                if i >= len(jobs) or failed.is_set():
                    return
                try:
                    results[i] = self._one(jobs[i])
                except BaseException:
                    failed.set()
                    raise

        futures = [self.pool.submit(work) for _ in range(min(self.concurrency, len(jobs)))]
        for future in futures:
            future.exception()  # wait for every worker before raising: none is left writing blobs
        for future in futures:
            future.result()
        return results  # type: ignore[return-value]  # every slot is filled when no worker raised
