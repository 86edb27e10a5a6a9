"""Filesystem folders: new, changed and deleted files under a root.

One run is a merge join of two streams in the same byte order: the folder walk (entries sorted per
folder so that depth-first order equals the order of the full relative paths) and the connector's
known-document index in Redis (one page of 1,000 ids per round trip). Memory stays flat whatever
the tree size, deletions fall out of the join, and a no-change rescan reads no file content: the
stored fingerprint (size, mtime, ctime, inode, device) tells it nothing changed. A fingerprint
mismatch only triggers a re-hash; a new version is queued only when the sha256 differs, and a file
copied in with an old mtime is still caught because its inode and ctime are new.
"""

from __future__ import annotations

import mimetypes
import os
import stat as stat_mod
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.config.models import DurationOrZero, Megabytes, Strict
from kmrl_sync.config.optiontypes import ConfigPath, GlobList
from kmrl_sync.connectors.filesystem import hashing as fshash
from kmrl_sync.connectors.filesystem.hashing import Digest
from kmrl_sync.content.store import BlobTooLarge
from kmrl_sync.engine.connector import Connector, ConnectorError
from kmrl_sync.engine.documents import BATCH_LIMIT, Batch, Delete, Failure, Upsert
from kmrl_sync.engine.docview import file_url

_HASH_GROUP = 128  # files per hashing task: amortises the executor's (and pickling's) per-task cost


class FilesystemOptions(Strict):
    root: ConfigPath
    include: GlobList = Field(default_factory=lambda: ["**/*"])
    exclude: GlobList = Field(default_factory=list)
    follow_symlinks: bool = False
    min_age: DurationOrZero = 0.0
    snapshot: bool = False
    max_file_mb: Megabytes | None = None
    watch: bool = False
    hash_workers: int | None = Field(default=None, ge=0, le=64)  # None: see _hasher

    @field_validator("root")
    @classmethod
    def _root_can_be_a_folder(cls, root: Path) -> Path:
        """A missing root is allowed (a mount that comes later); a file never becomes a folder."""
        try:
            st = os.stat(root)
        except NotADirectoryError:
            raise ValueError(f"{root} lies under a file, so it can never be a folder") from None
        except OSError:  # missing, or not ours to look at yet: the run reports it if it stays so
            return root
        if not stat_mod.S_ISDIR(st.st_mode):
            kind = "a file" if stat_mod.S_ISREG(st.st_mode) else "not a folder"
            raise ValueError(f"{root} is {kind}; root must be a folder")
        return root




def fingerprint_of(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def _iso(ns: int) -> str:
    return _iso_seconds(ns // 1_000_000_000)


@lru_cache(maxsize=4096)
def _iso_seconds(seconds: int) -> str:
    # Files of a tree tend to share their mtime second (copied or unpacked together).
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@lru_cache(maxsize=1024)
def _mime_for_suffix(suffix: str) -> str:
    return mimetypes.guess_type("x" + suffix, strict=False)[0] or "application/octet-stream"


def _mime_type(rel: str) -> str:
    name = rel.rpartition("/")[2]
    dot = name.rfind(".")
    return _mime_for_suffix(name[dot:].lower() if dot > 0 else "")


class _InlineExecutor:
    """`hash_workers: 0`: hash in the walking thread, no hand-offs."""

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


class _Stat:
    """The stat fields a fingerprint needs, from the reader's fstat (fshash.Meta)."""

    __slots__ = ("st_ctime_ns", "st_dev", "st_ino", "st_mtime_ns", "st_size")

    def __init__(self, meta: tuple[int, int, int, int, int]):
        self.st_size, self.st_mtime_ns, self.st_ctime_ns, self.st_ino, self.st_dev = meta


class _Entry:
    """A file to read: `st` from the walk, or None when the walk did not stat it (a new regular
    file: the reader's fstat supplies it); `target` is what to open (a followed symlink's target)."""

    __slots__ = ("path", "rel", "st", "target")

    def __init__(self, rel: str, path: str, st: os.stat_result | _Stat | None, target: str):
        self.rel = rel
        self.path = path
        self.st = st
        self.target = target


# What the walk yields for a file it saw but leaves alone this run (too young, or its metadata
# could not be read): a known document stays as it is.
_LEFT_ALONE: Any = "left alone"


class FilesystemConnector(Connector):
    Options = FilesystemOptions
    description = "files under a folder (local disk, NFS or SMB mount); inotify watch mode optional"

    options: FilesystemOptions

    def __init__(self, context):
        super().__init__(context)
        self.root = Path(os.path.abspath(self.options.root))
        self.filter = PathFilter(self.options.include, self.options.exclude)
        self.max_bytes = int(self.options.max_file_mb * 1024 * 1024) if self.options.max_file_mb else None
        self._real_root = ""
        self._walk_failures: list[Failure] = []
        self._unlisted: list[str] = []

    def check_connection(self) -> None:
        if not self.root.is_dir():
            raise ConnectorError(f"root {self.root} does not exist or is not a folder")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise ConnectorError(f"root {self.root} is not readable by this user")

    supports_watch = True
    pipelined_commits = True  # the merge join only reads ids ahead of anything a pending commit touches

    def watch_enabled(self) -> bool:
        return self.options.watch

    def document_root(self) -> str | None:
        return str(self.root)  # the walk's base: every document's absolute_path is root/<native id>

    def watch(self, notify, stop) -> None:
        from kmrl_sync.connectors.filesystem.watch import watch_tree

        watch_tree(self.root, self.filter, notify, stop, log=self.log)

    # ------------------------------------------------------------------ walk

    def _walk(self) -> Iterator[tuple[str, str, Any, str]]:
        """Yield (relative path, absolute path, stat, path to open) in byte order.

        stat is an os.stat_result, None for a regular file not statted yet (only when the run needs
        no stat to decide: no min_age; the reader's fstat supplies it), or _LEFT_ALONE.
        """
        self._real_root = os.path.realpath(self.root)
        root_st = os.stat(self.root)
        # Each frame: iterator over sorted (key, name, is_dir, st, target) of one folder, its rel
        # prefix, its absolute path, and the set of (dev, ino) of the folders above it (loop guard).
        stack: list[tuple[Iterator[tuple[str, str, bool, Any, str]], str, str, frozenset]] = []
        stack.append((self._list_dir(str(self.root), ""), "", str(self.root),
                      frozenset({(root_st.st_dev, root_st.st_ino)})))
        min_age_ns = int(self.options.min_age * 1e9)
        now_ns = time.time_ns()
        filter_files = not self.filter.takes_every_file
        wants_file = self.filter.wants_file
        while stack:
            entries, prefix, base, ancestors = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            _key, name, is_dir, st, target = item
            rel = prefix + name
            path = base + "/" + name
            if is_dir:
                if self.filter.prunes_dir(rel):
                    continue
                if st is not None and st is not _LEFT_ALONE:
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        self.log.warning("symlink loop skipped", path=rel)
                        continue
                    ancestors_below = ancestors | {ident}
                else:
                    ancestors_below = ancestors
                stack.append((self._list_dir(path, rel), rel + "/", path, ancestors_below))
                continue
            if filter_files and not wants_file(rel):
                continue
            if min_age_ns and st is not _LEFT_ALONE and now_ns - st.st_mtime_ns < min_age_ns:
                yield rel, path, _LEFT_ALONE, path  # still being written: look again next run
                continue
            yield rel, path, st, target or path

    def _list_dir(self, path: str, rel_dir: str) -> Iterator[tuple[str, str, bool, Any, str]]:
        """One folder's entries as sorted (sort key, name, is_dir, stat, target to open).

        Types come from the listing itself (d_type); a stat is only made where the run needs it:
        folders when following symlinks (loop guard), files when min_age is set, symlinks.
        """
        try:
            with os.scandir(path) as it:
                raw = list(it)
        except OSError as exc:
            self._walk_failures.append(Failure(rel_dir or ".", f"cannot list folder: {exc.strerror or exc}"))
            self._unlisted.append(rel_dir + "/")  # what we knew below it is not deleted
            return iter(())
        items: list[tuple[str, str, bool, Any, str]] = []
        append = items.append
        follow = self.options.follow_symlinks
        stat_files = self.options.min_age > 0
        for entry in raw:
            name = entry.name
            if not name.isascii():
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    self._walk_failures.append(Failure((rel_dir + "/" if rel_dir else "") + shown,
                                                       "file name is not valid UTF-8; rename it to sync it"))
                    continue
            try:
                if entry.is_file(follow_symlinks=False):
                    append((name, name, False, entry.stat(follow_symlinks=False) if stat_files else None, ""))
                elif entry.is_dir(follow_symlinks=False):
                    append((name + "/", name, True, entry.stat(follow_symlinks=False) if follow else None, ""))
                elif follow and entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target != self._real_root and not target.startswith(self._real_root + os.sep):
                        self.log.warning("symlink outside root skipped", path=(rel_dir + "/" if rel_dir else "") + name)
                        continue
                    st = os.stat(entry.path)
                    if stat_mod.S_ISDIR(st.st_mode):
                        append((name + "/", name, True, st, ""))
                    elif stat_mod.S_ISREG(st.st_mode):
                        append((name, name, False, st, target))
                # anything else (sockets, fifos, devices, symlinks not followed) is not a document
            except FileNotFoundError:
                continue  # vanished while scanning: a known one is deleted by the join
            except OSError as exc:
                rel = (rel_dir + "/" if rel_dir else "") + name
                self._walk_failures.append(Failure(rel, f"cannot stat: {exc.strerror or exc}"))
                if not entry.is_dir(follow_symlinks=False):
                    append((name, name, False, _LEFT_ALONE, ""))
        items.sort()  # by the sort key alone: names are unique, so tuples never tie on it
        return iter(items)

    # ------------------------------------------------------------------ content

    def _snapshot_group(self, group: list[_Entry]) -> list[Upsert | Failure | None]:
        """Snapshot mode: copy each file into the blob store (in this process: the store's
        durability bookkeeping lives here), hashing it on the way."""
        results: list[Upsert | Failure | None] = []
        for entry in group:
            try:
                fd = os.open(entry.target, fshash.OPEN_FLAGS)  # as the reference-mode reader opens
                try:
                    st = os.fstat(fd)
                    if not stat_mod.S_ISREG(st.st_mode):
                        results.append(Failure(entry.rel, "cannot read: not a regular file any more"))
                        continue
                    if entry.st is None:
                        entry.st = st
                    if self.max_bytes is not None and st.st_size > self.max_bytes:
                        results.append(self._too_large(entry.rel, st.st_size))
                        continue
                    ref = self.context.blobs.put_chunks(iter(partial(os.read, fd, fshash.CHUNK), b""),
                                                        max_size=self.max_bytes)
                finally:
                    os.close(fd)
            except FileNotFoundError:
                results.append(None)
                continue
            except (OSError, BlobTooLarge) as exc:
                results.append(Failure(entry.rel, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
                continue
            results.append(self._upsert(entry, ref.sha256, ref.size, ref.uri))
        return results

    @staticmethod
    def _too_large(rel: str, size: int) -> Failure:
        return Failure(rel, f"larger than max_file_mb ({size} bytes)")

    def _from_digest(self, entry: _Entry, result: Digest) -> Upsert | Failure | None:
        digest, size, error, meta = result
        if entry.st is None and meta is not None:
            entry.st = _Stat(meta)  # the walk left the stat to the reader
        if digest is None:
            if meta is not None:
                return self._too_large(entry.rel, meta[0])
            # vanished between walk and read (no message): the next run's join deletes it
            return Failure(entry.rel, f"cannot read: {error}") if error else None
        return self._upsert(entry, digest, size, "")

    def _upsert(self, entry: _Entry, digest: str, size: int, blob_uri: str) -> Upsert:
        # The stat taken before reading is the fingerprint: if the file changed after it, the
        # next run sees a different stat and re-hashes.
        st, rel = entry.st, entry.rel
        metadata = {
            "filename": rel.rpartition("/")[2],
            "path": rel,
            "absolute_path": entry.path,
            "source_url": file_url(entry.path),
            "sha256": digest,
            "size": str(size),  # hash fields are strings: saves normalising it at commit time
            "mime_type": _mime_type(rel),
            "modified_at": _iso(st.st_mtime_ns),
            "blob": blob_uri,
        }
        return Upsert(rel, digest, metadata, fingerprint_of(st))

    def _hasher(self) -> tuple[Any, Callable[[list[_Entry]], Future], int]:
        """(executor to shut down, submit(group) -> future of its results, groups kept in flight)."""
        workers = self.options.hash_workers
        cores = os.cpu_count() or 1
        if workers is None and self.options.snapshot:
            # Threads: reading, hashing, encrypting and writing a blob release the GIL, so two
            # overlap even on 2 cores (bench/crypto, 2,000 x 100 KB: 0.69x the time of inline).
            workers = max(2, min(4, cores))
        elif workers is None:
            # Processes: a core for this process and one for Redis first; on 2 cores they only contend.
            workers = max(0, min(4, cores - 2))
        if self.options.snapshot:
            executor: Any = (ThreadPoolExecutor(workers, thread_name_prefix="snapshot")
                             if workers > 0 else _InlineExecutor())
            return executor, lambda group: executor.submit(self._snapshot_group, group), max(2, 2 * workers)
        if workers <= 0:
            executor = _InlineExecutor()
        else:
            # Worker processes read and hash on the other cores, free of this process's GIL, while
            # this one walks and prepares commits. forkserver: this process already runs threads.
            import multiprocessing  # here, not at the top: 12 ms of start-up for a rarely used option
            from concurrent.futures import ProcessPoolExecutor

            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
        submit = lambda group: executor.submit(fshash.digest_files, [e.target for e in group], self.max_bytes)  # noqa: E731
        return executor, submit, 2 * workers + 2

    # ------------------------------------------------------------------ sync

    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        self.check_connection()
        known = self.context.state.iter_known()
        next_known = next(known, None)
        batch = Batch()
        pending: deque[tuple[list[_Entry], Future]] = deque()
        group: list[_Entry] = []
        executor: Any = None
        submit: Any = None
        max_pending = 1

        def drain(limit: int) -> Iterator[Batch]:
            nonlocal batch
            while len(pending) > limit:
                entries, future = pending.popleft()
                results = future.result()
                if not self.options.snapshot:
                    results = [self._from_digest(e, r) for e, r in zip(entries, results, strict=True)]
                for result in results:
                    if isinstance(result, Upsert):
                        batch.changes.append(result)
                        if len(batch.changes) >= BATCH_LIMIT:
                            yield self._with_walk_failures(batch)
                            batch = Batch()
                    elif isinstance(result, Failure):
                        batch.failures.append(result)

        try:
            for seen, (rel, path, st, target) in enumerate(self._walk()):
                if not seen & 255 and self.context.should_stop():
                    break
                # Everything known that sorts before this path is gone from the tree.
                while next_known is not None and next_known[0] < rel:
                    self._delete_unless_unlisted(batch, next_known[0])
                    next_known = next(known, None)
                is_known = next_known is not None and next_known[0] == rel
                if is_known:
                    stored_fp = next_known[1]
                    next_known = next(known, None)
                    if st is None:  # a known file needs its stat to compare, without reading it
                        try:
                            st = os.lstat(path)
                        except FileNotFoundError:
                            self._delete_unless_unlisted(batch, rel)  # vanished since the listing
                            continue
                        except OSError as exc:
                            batch.failures.append(Failure(rel, f"cannot stat: {exc.strerror or exc}"))
                            st = _LEFT_ALONE
                    if st is _LEFT_ALONE or (not full and stored_fp == fingerprint_of(st)):
                        batch.unchanged += 1
                        continue
                elif st is _LEFT_ALONE:
                    continue
                if st is not None and self.max_bytes is not None and st.st_size > self.max_bytes:
                    batch.failures.append(self._too_large(rel, st.st_size))
                    continue
                group.append(_Entry(rel, path, st, target))
                if len(group) >= _HASH_GROUP:
                    if executor is None:  # started on the first file to read: a no-change run starts none
                        executor, submit, max_pending = self._hasher()
                    pending.append((group, submit(group)))
                    group = []
                    yield from drain(max_pending)
                if len(batch.changes) >= BATCH_LIMIT:
                    yield self._with_walk_failures(batch)
                    batch = Batch()
            if group:
                if executor is None:
                    executor, submit, max_pending = self._hasher()
                pending.append((group, submit(group)))
            yield from drain(0)
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        if not self.context.should_stop():
            while next_known is not None:
                self._delete_unless_unlisted(batch, next_known[0])
                next_known = next(known, None)
                if len(batch.changes) >= BATCH_LIMIT:
                    yield self._with_walk_failures(batch)
                    batch = Batch()
        batch = self._with_walk_failures(batch)
        if batch.changes or batch.failures or batch.unchanged:
            yield batch

    def _delete_unless_unlisted(self, batch: Batch, rel: str) -> None:
        if not any(rel.startswith(prefix) for prefix in self._unlisted):
            batch.changes.append(Delete(rel, {"path": rel}))

    def _with_walk_failures(self, batch: Batch) -> Batch:
        if self._walk_failures:
            batch.failures.extend(self._walk_failures)
            self._walk_failures = []
        return batch
