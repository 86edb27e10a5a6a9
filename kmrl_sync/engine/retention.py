"""`blobs gc`: delete stored content that no live document refers to, safely while syncs run.

What is garbage: an object of the content store that no document hash refers to by its `blob`
field or its `sha256` (see `live_references`), except the hashes of deleted documents
(commit_batch.lua keeps a deleted document's hash, `blob` included, with `status: deleted`: the
content is no longer the document's), and that was last written (or refreshed) before the cutoff.
Also leftovers of killed writers (temporary files, incomplete multipart uploads) older than the
same cutoff.

Why it never deletes what a commit in flight refers to. A sync writes (or, for content already
stored, refreshes: the store's freshness promise, content/store.py) every object a batch refers
to after it took its connector's lease, flushes, and only then commits the batch, which fences
on that lease. gc works in this order:

1. t0 = now; read every held lease's start (`acquired_at`). Put back any object a killed gc had
   set aside (folder store), whatever its age; remove the leftovers older than min(t0 - grace,
   those starts - CLOCK_MARGIN).
2. List the store's objects: the candidates.
3. Read every document hash (SCAN, page by page) for the digests live documents refer to.
4. Read the held leases again, and whether any run began since step 1 (a whole run can fit
   between steps 1 and 4: the `last_run_started` of its connector's stats changed; then t0
   counts as a start). Comparing the values read at both steps needs no clock.
5. cutoff = min(t0 - grace, the earliest start seen in 1 and 4 - CLOCK_MARGIN, t4 - TIME_SLACK)
   (t4: when step 4 began); delete each candidate that is unreferenced and older than the cutoff,
   with the store's conditional delete (`unless_modified_after=cutoff`), which keeps an object a
   writer refreshed after it was listed.

A batch whose commit lands after step 3 read its document's hash belongs to a run that held its
lease at step 1, or at step 4, or began in between (step 4's stats): its objects were written or
refreshed after that run began, so they are younger than the cutoff and spared. A run beginning
after step 4 refreshes the objects it needs after the listing, so they read as modified after
t4 - TIME_SLACK at least: the conditional delete sees that (the folder store's is race-free; S3's
is a HEAD then DELETE: a window of one round trip, see content/s3.py). A commit that landed before
step 3 reached its hash is simply a reference.
Clocks: lease and run starts come from the sync hosts, modified times from the store; they are
assumed to agree within CLOCK_MARGIN (NTP). A lease written without a start (an older kmrl-sync)
counts as started at the beginning of time: nothing is deleted while it is held.

Memory: neither the candidates nor the references are held in memory. Both are spilled to
temporary files, BUCKETS of them each, by their digest's first hex digits; then bucket by bucket
the references (about 1/BUCKETS of them: 10 million documents make buckets of ~160,000 digests,
~15 MB as a set of 32-byte digests) are loaded and the objects of that bucket checked against
them. Temporary disk: 32 bytes per live reference and 48 per object (~0.8 GB at 10 million of each).

Only one gc runs at a time (a Redis lock, `keys.gc_lock_key`): a second one exits at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import redis

from kmrl_sync.content.folder import GC_ASIDE
from kmrl_sync.content.store import DIGEST, ContentStore, ContentUnavailable
from kmrl_sync.engine import keys
from kmrl_sync.engine.connection import scan_keys

__all__ = ["CLOCK_MARGIN", "GcBusy", "GcReport", "collect_garbage", "describe"]

CLOCK_MARGIN = 60.0  # seconds the clocks of sync hosts, the gc host and the store may disagree by
BUCKETS = 64  # spill files per kind (digest's first byte >> 2)
SCAN_PAGE = 1000  # keys asked of SCAN per call, their fields read in one pipeline
LOCK_TTL = 600.0  # the gc lock lives this long unless renewed (it is, every SCAN_PAGE items)
# How far behind this host's clock a freshly written object's modified time can read: a local
# filesystem stamps with the kernel's coarse clock (a few ms behind); S3 with its own clock, in whole
# seconds (S3Store.delete allows for the truncation itself), kept by NTP within this of ours.
TIME_SLACK = {"s3": 1.0, "file": 0.05}

_CANDIDATE = struct.Struct("<32sqd")  # digest, size, modified


class GcBusy(RuntimeError):
    """Another `blobs gc` holds the lock."""


@dataclass
class GcReport:
    dry_run: bool
    grace_seconds: float
    objects: int = 0  # objects listed in the store
    referenced: int = 0  # live references read from Redis (one or two per live document)
    deleted: int = 0  # unreferenced objects deleted (or, dry run, that would be)
    deleted_bytes: int = 0
    kept_recent: int = 0  # unreferenced but too recent (grace, or written since a running sync began)
    leftovers_deleted: int = 0
    leftover_bytes: int = 0
    restored: int = 0  # objects a killed gc had set aside, put back (folder store)
    cutoff: str = ""  # ISO time: objects older than this were eligible
    stopped: bool = False  # asked to stop half-way (the daemon stopping)

    @property
    def freed_bytes(self) -> int:
        return self.deleted_bytes + self.leftover_bytes

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "freed_bytes": self.freed_bytes}


def _bucket(digest: bytes) -> int:
    return digest[0] * BUCKETS >> 8


class _Spill:
    """Fixed-size records in BUCKETS temporary files, by their digest's first byte."""

    def __init__(self, folder: str, kind: str, size: int):
        self._paths = [os.path.join(folder, f"{kind}-{i:02d}") for i in range(BUCKETS)]
        self._files: list[BinaryIO | None] = [None] * BUCKETS
        self._size = size

    def add(self, digest: bytes, record: bytes) -> None:
        i = _bucket(digest)
        f = self._files[i]
        if f is None:
            f = self._files[i] = open(self._paths[i], "wb")  # noqa: SIM115 (closed in finish)
        f.write(record)

    def finish(self) -> None:
        for f in self._files:
            if f is not None:
                f.close()

    def read(self, i: int) -> Iterator[bytes]:
        if self._files[i] is None:
            return
        with open(self._paths[i], "rb") as f:
            while block := f.read(self._size * 4096):
                for offset in range(0, len(block), self._size):
                    yield block[offset:offset + self._size]


def _epoch(iso: str) -> float:
    """An ISO time of ours (`2026-12-07T19:47:01.636Z`) as epoch seconds; -inf when unreadable, which
    makes the run it belongs to count as started at the beginning of time (the safe side)."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return -math.inf


def _scan(client: redis.Redis, pattern: str) -> Iterator[list[bytes]]:
    """The keys matching `pattern` in pages of SCAN_PAGE; on a Redis Cluster from every master
    (redis-py's scan_iter keeps one cursor per node: a single SCAN cursor would see one node only)."""
    page: list[bytes] = []
    for key in scan_keys(client, pattern, count=SCAN_PAGE):
        page.append(key)
        if len(page) == SCAN_PAGE:
            yield page
            page = []
    if page:
        yield page


def lease_starts(client: redis.Redis, prefix: str) -> list[float]:
    """When each currently held lease was taken (epoch seconds)."""
    starts = []
    for page in _scan(client, keys.lease_keys_pattern(prefix)):
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.hmget(key, "token", "acquired_at")
        for key, (token, acquired) in zip(page, pipe.execute(), strict=True):
            if token and keys.lease_connector(prefix, key.decode("utf-8", "replace")) is not None:
                starts.append(_epoch(acquired.decode()) if acquired else -math.inf)
    return starts


def run_starts(client: redis.Redis, prefix: str) -> dict[str, bytes | None]:
    """Each connector's `last_run_started` (its stats): it changes whenever a run begins."""
    names = sorted(m.decode("utf-8", "replace") for m in client.smembers(keys.connectors_set(prefix)))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hget(keys.ConnectorKeys(prefix, name).stats, "last_run_started")
    return dict(zip(names, pipe.execute(), strict=True)) if names else {}


def live_references(client: redis.Redis, prefix: str, store: ContentStore) -> Iterator[str]:
    """The digests of the objects live documents may refer to (deleted documents refer to none).

    Two per document, over-approximated on purpose (a missed reference deletes live content, an
    extra one only keeps an object): the object its `blob` names, and the one named by its
    `sha256`, since the stores are addressed by the plaintext's sha256 and a compact document hash
    may leave `blob` out (it is derived from `sha256` and the store's URI base when read).
    """
    for page in _scan(client, keys.doc_keys_pattern(prefix)):
        pipe = client.pipeline(transaction=False)
        for key in page:
            pipe.hmget(key, "blob", "sha256", "status")
        for blob, sha256, status in pipe.execute():
            if status == b"deleted":
                continue
            if sha256 and DIGEST.fullmatch(digest := sha256.decode("ascii", "replace")):
                yield digest
            if not blob:
                continue
            text = blob.decode("utf-8", "replace")
            try:
                digest = store.digest_of(text)
            except ContentUnavailable:
                # Not a URI of this store: a plain path written by an older kmrl-sync, or another
                # store's URI. Its digest still counts (the same content, content-addressed).
                digest = text.rpartition("/")[2]
            if DIGEST.fullmatch(digest) and digest != (sha256 or b"").decode("ascii", "replace"):
                yield digest


class _Lock:
    """The gc lock: redis-py's own Lock (token, TTL, compare-and-delete release)."""

    def __init__(self, client: redis.Redis, prefix: str):
        self._lock = client.lock(keys.gc_lock_key(prefix), timeout=LOCK_TTL, blocking=False)

    def __enter__(self) -> _Lock:
        if not self._lock.acquire():
            raise GcBusy("another `kmrl-sync blobs gc` is running (the daemon's schedule, or a manual one)")
        return self

    def renew(self) -> None:
        """Reset the lock's TTL; GcBusy if it expired meanwhile (another gc may have started)."""
        try:
            self._lock.reacquire()
        except redis.exceptions.LockError:
            raise GcBusy("the gc lock expired while this gc ran (Redis unreachable for minutes?); stopped") from None

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(redis.exceptions.LockError):  # expired: nothing to release
            self._lock.release()


def collect_garbage(
    client: redis.Redis,
    store: ContentStore,
    prefix: str,
    *,
    grace: float,
    dry_run: bool = False,
    spill_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> GcReport:
    """One gc pass (see the module docstring); raises GcBusy when another one is running.

    `should_stop()` (the daemon's stop flag) is asked every SCAN_PAGE items, when the lock is
    renewed too: a gc stopped half-way has deleted only what it was entitled to, and reports
    `stopped`.
    """
    report = GcReport(dry_run=dry_run, grace_seconds=grace)
    say = progress or (lambda _message: None)
    steps = [0]

    def stopping() -> bool:
        """Called for every item: every SCAN_PAGE of them, renew the lock and ask should_stop."""
        steps[0] += 1
        if steps[0] % SCAN_PAGE:
            return False
        lock.renew()
        report.stopped = should_stop()
        return report.stopped

    slack = TIME_SLACK["s3" if store.uri_base.startswith("s3://") else "file"]
    with _Lock(client, prefix) as lock, tempfile.TemporaryDirectory(prefix="kmrl-gc-", dir=spill_dir) as folder:
        runs_before = run_starts(client, prefix)
        t0 = time.time()
        starts = lease_starts(client, prefix)

        # Leftovers first: a killed gc's object set aside is put back (FolderStore.delete_leftover)
        # before the listing, so this pass judges it like any object. A writer's temporary file is
        # younger than its run's start, or, for a run that began since t0, than t0.
        say("removing leftovers")
        leftovers_before = min(t0 - grace, t0 - slack, *(s - CLOCK_MARGIN for s in starts))
        for leftover in list(store.list_leftovers()):
            if stopping():
                return report
            if os.path.basename(leftover.name).startswith(GC_ASIDE):
                # Not garbage: an object a killed gc set aside; putting it back is always safe.
                if not dry_run:
                    store.delete_leftover(leftover)
                report.restored += 1
            elif leftover.modified < leftovers_before:
                if not dry_run:
                    store.delete_leftover(leftover)
                report.leftovers_deleted += 1
                report.leftover_bytes += leftover.size

        say("listing the store")
        candidates = _Spill(folder, "candidates", _CANDIDATE.size)
        try:
            for obj in store.list_objects():
                report.objects += 1
                if stopping():
                    return report
                if DIGEST.fullmatch(obj.digest):  # all of them: the recent ones are counted as kept
                    digest = bytes.fromhex(obj.digest)
                    candidates.add(digest, _CANDIDATE.pack(digest, obj.size, obj.modified))
        finally:
            candidates.finish()

        say("reading the documents' references")
        references = _Spill(folder, "references", 32)
        try:
            for digest_hex in live_references(client, prefix, store):
                report.referenced += 1
                if stopping():
                    return report
                digest = bytes.fromhex(digest_hex)
                references.add(digest, digest)
        finally:
            references.finish()

        t4 = time.time()
        starts += lease_starts(client, prefix)
        if run_starts(client, prefix) != runs_before:
            starts.append(t0)  # a run began (and perhaps ended) since t0: it wrote after t0
        # Older than the grace period and than any run that may still commit; and for a write after
        # this point (a run not seen yet), no older than its modified time can read.
        cutoff = min(t0 - grace, t4 - slack, *(s - CLOCK_MARGIN for s in starts))
        report.cutoff = datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds") if cutoff > 0 else ""

        say("deleting")
        for i in range(BUCKETS):
            live = set(references.read(i))
            for record in candidates.read(i):
                if stopping():
                    return report
                digest, size, modified = _CANDIDATE.unpack(record)
                if digest in live:
                    continue
                if modified >= cutoff:
                    report.kept_recent += 1
                elif dry_run or store.delete(digest.hex(), unless_modified_after=cutoff):
                    report.deleted += 1
                    report.deleted_bytes += size
                else:  # refreshed by a writer since it was listed (or gone meanwhile)
                    report.kept_recent += 1
    return report


def describe(report: GcReport) -> str:
    """One line for people: what was (or would be) deleted and freed, and what was kept."""
    verb = "would delete" if report.dry_run else "deleted"
    return (f"{verb} {report.deleted} unreferenced object(s) ({_size(report.deleted_bytes)}) and "
            f"{report.leftovers_deleted} leftover(s) ({_size(report.leftover_bytes)}), "
            f"{_size(report.freed_bytes)} in all; kept {report.kept_recent} unreferenced as too recent "
            f"(younger than {report.cutoff or 'any cutoff: a sync of unknown start holds its lease'}); "
            f"{report.objects} object(s) in the store, {report.referenced} live reference(s)"
            + (f"; put back {report.restored} object(s) a killed gc had set aside" if report.restored else ""))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit} ({n:,} bytes)"
