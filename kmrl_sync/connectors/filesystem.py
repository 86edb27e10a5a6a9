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

import hashlib
import mimetypes
import os
import stat as stat_mod
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator

from kmrl_sync.config import Strict, parse_duration
from kmrl_sync.connectors.base import Connector, ConnectorError
from kmrl_sync.documents import BATCH_LIMIT, Batch, Delete, Failure, Upsert
from kmrl_sync.globs import PathFilter
from kmrl_sync.optiontypes import ConfigPath, GlobList

_READ_WHOLE = 4 << 20  # files up to this size are read in one call
_CHUNK = 1 << 20
_HASH_GROUP = 64  # files per thread-pool task: amortises the executor's per-task overhead


class FilesystemOptions(Strict):
    root: ConfigPath
    include: GlobList = Field(default_factory=lambda: ["**/*"])
    exclude: GlobList = Field(default_factory=list)
    follow_symlinks: bool = False
    min_age: float = 0.0
    snapshot: bool = False
    max_file_mb: float | None = Field(default=None, gt=0)
    watch: bool = False
    hash_threads: int = Field(default=4, ge=1, le=64)

    @field_validator("min_age", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if value in (0, "0", None):
            return 0.0
        return parse_duration(value)



def fingerprint_of(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


def _hash_rest(fd: int, hasher: Any, size: int) -> tuple[str, int]:
    while chunk := os.read(fd, _CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


@lru_cache(maxsize=1024)
def _mime_for_suffix(suffix: str) -> str:
    return mimetypes.guess_type("x" + suffix, strict=False)[0] or "application/octet-stream"


def _mime_type(rel: str) -> str:
    name = rel.rpartition("/")[2]
    dot = name.rfind(".")
    return _mime_for_suffix(name[dot:].lower() if dot > 0 else "")


class _InlineExecutor:
    """`hash_threads: 1`: hash in the walking thread, no hand-offs (and no GIL ping-pong)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any, *args: Any) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future


class _Entry:
    """A file found by the walk; `st` is from the walk, re-checked with fstat when it is read."""

    __slots__ = ("path", "rel", "st")

    def __init__(self, rel: str, path: str, st: os.stat_result):
        self.rel = rel
        self.path = path
        self.st = st


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

    def watch(self, notify, stop) -> None:
        from kmrl_sync.connectors.fswatch import watch_tree

        watch_tree(self.root, self.filter, notify, stop, log=self.log)

    # ------------------------------------------------------------------ walk

    def _walk(self) -> Iterator[tuple[str, _Entry | None]]:
        """Yield (relative path, entry) in byte order; entry None = present but left alone this run
        (too young, or unreadable metadata), which keeps a known document from being deleted."""
        self._real_root = os.path.realpath(self.root)
        root_st = os.stat(self.root)
        # Each frame: iterator over sorted (key, name, is_dir, st) of one folder, its rel prefix,
        # its absolute path, and the set of (dev, ino) of the folders above it (loop guard).
        stack: list[tuple[Iterator[tuple[str, str, bool, os.stat_result | None]], str, str, frozenset]] = []
        stack.append((self._list_dir(str(self.root), ""), "", str(self.root),
                      frozenset({(root_st.st_dev, root_st.st_ino)})))
        min_age_ns = int(self.options.min_age * 1e9)
        now_ns = time.time_ns()
        while stack:
            entries, prefix, base, ancestors = stack[-1]
            item = next(entries, None)
            if item is None:
                stack.pop()
                continue
            _key, name, is_dir, st = item
            rel = prefix + name
            path = base + "/" + name
            if is_dir:
                if self.filter.prunes_dir(rel):
                    continue
                if st is not None:
                    ident = (st.st_dev, st.st_ino)
                    if ident in ancestors:
                        self.log.warning("symlink loop skipped", path=rel)
                        continue
                    ancestors_below = ancestors | {ident}
                else:
                    ancestors_below = ancestors
                stack.append((self._list_dir(path, rel), rel + "/", path, ancestors_below))
                continue
            if not self.filter.wants_file(rel):
                continue
            if st is None:
                yield rel, None
                continue
            if min_age_ns and now_ns - st.st_mtime_ns < min_age_ns:
                yield rel, None  # still being written: look again next run
                continue
            yield rel, _Entry(rel, path, st)

    def _list_dir(self, path: str, rel_dir: str) -> Iterator[tuple[str, str, bool, os.stat_result | None]]:
        try:
            with os.scandir(path) as it:
                raw = list(it)
        except OSError as exc:
            self._walk_failures.append(Failure(rel_dir or ".", f"cannot list folder: {exc.strerror or exc}"))
            self._unlisted.append(rel_dir + "/")  # what we knew below it is not deleted
            return iter(())
        items: list[tuple[str, str, bool, os.stat_result | None]] = []
        follow = self.options.follow_symlinks
        for entry in raw:
            name = entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                self._walk_failures.append(Failure((rel_dir + "/" if rel_dir else "") + shown,
                                                   "file name is not valid UTF-8; rename it to sync it"))
                continue
            try:
                if entry.is_symlink():
                    if not follow:
                        continue
                    target = os.path.realpath(entry.path)
                    if target != self._real_root and not target.startswith(self._real_root + os.sep):
                        self.log.warning("symlink outside root skipped", path=(rel_dir + "/" if rel_dir else "") + name)
                        continue
                    st = os.stat(entry.path)
                    is_dir = stat_mod.S_ISDIR(st.st_mode)
                    if not is_dir and not stat_mod.S_ISREG(st.st_mode):
                        continue
                elif entry.is_dir(follow_symlinks=False):
                    st, is_dir = entry.stat(follow_symlinks=False), True
                elif entry.is_file(follow_symlinks=False):
                    st, is_dir = entry.stat(follow_symlinks=False), False
                else:
                    continue  # sockets, fifos, devices are not documents
            except FileNotFoundError:
                continue  # vanished while scanning: a known one is deleted by the join
            except OSError as exc:
                rel = (rel_dir + "/" if rel_dir else "") + name
                self._walk_failures.append(Failure(rel, f"cannot stat: {exc.strerror or exc}"))
                if entry.is_dir(follow_symlinks=False):
                    continue
                st, is_dir = None, False
            items.append((name + "/" if is_dir else name, name, is_dir, st))
        items.sort(key=lambda i: i[0])
        return iter(items)

    # ------------------------------------------------------------------ content

    def _hash_group(self, group: list[tuple[_Entry, bool]]) -> list[Upsert | Failure | None]:
        return [self._hash_one(entry, known) for entry, known in group]

    def _hash_one(self, entry: _Entry, known: bool) -> Upsert | Failure | None:
        # os.open/os.read instead of open(): no buffered-file objects on a path run 100,000 times.
        try:
            fd = os.open(entry.path, _OPEN_FLAGS)
        except FileNotFoundError:
            return None  # vanished between walk and read; the next run's join deletes it if known
        except OSError as exc:
            return Failure(entry.rel, f"cannot read: {exc.strerror or exc}")
        # The walk's stat is the fingerprint: if the file changes after it, the next run sees a
        # different stat and re-hashes, so no fstat is needed here (one syscall less per file).
        st = entry.st
        try:
            if self.max_bytes is not None and st.st_size > self.max_bytes:
                return Failure(entry.rel, f"larger than max_file_mb ({st.st_size} bytes)")
            blob_path = ""
            if self.options.snapshot:
                ref = self.context.blobs.put_chunks(iter(lambda: os.read(fd, _CHUNK), b""), max_size=self.max_bytes)
                digest, size, blob_path = ref.sha256, ref.size, str(ref.path)
            elif st.st_size < _READ_WHOLE:
                # One read of size+1 bytes: a short read proves end of file without another syscall.
                data = os.read(fd, st.st_size + 1)
                if len(data) <= st.st_size:
                    digest, size = hashlib.sha256(data).hexdigest(), len(data)
                else:  # grew since the walk: read the rest
                    digest, size = _hash_rest(fd, hashlib.sha256(data), len(data))
            else:
                digest, size = _hash_rest(fd, hashlib.sha256(), 0)
        except OSError as exc:
            return Failure(entry.rel, f"cannot read: {exc.strerror or exc}")
        finally:
            os.close(fd)
        rel = entry.rel
        metadata = {
            "filename": rel.rpartition("/")[2],
            "path": rel,
            "absolute_path": entry.path,
            "source_url": "file://" + quote(entry.path),
            "sha256": digest,
            "size": size,
            "mime_type": _mime_type(rel),
            "modified_at": _iso(st.st_mtime_ns),
            "blob": blob_path,
        }
        return Upsert(rel, digest, metadata, fingerprint_of(st))

    # ------------------------------------------------------------------ sync

    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        self.check_connection()
        known = self.context.state.iter_known()
        next_known = next(known, None)
        batch = Batch()
        pending: deque[Future[list[Upsert | Failure | None]]] = deque()
        group: list[tuple[_Entry, bool]] = []
        max_pending = max(2, 2 * self.options.hash_threads)

        def drain(limit: int) -> Iterator[Batch]:
            nonlocal batch
            while len(pending) > limit:
                for result in pending.popleft().result():
                    if isinstance(result, Upsert):
                        batch.changes.append(result)
                        if len(batch.changes) >= BATCH_LIMIT:
                            yield self._with_walk_failures(batch)
                            batch = Batch()
                    elif isinstance(result, Failure):
                        batch.failures.append(result)

        pool_cm = (ThreadPoolExecutor(self.options.hash_threads, thread_name_prefix="hash")
                   if self.options.hash_threads > 1 else _InlineExecutor())
        with pool_cm as pool:
            for rel, entry in self._walk():
                if self.context.should_stop():
                    break
                # Everything known that sorts before this path is gone from the tree.
                while next_known is not None and next_known[0] < rel:
                    self._delete_unless_unlisted(batch, next_known[0])
                    next_known = next(known, None)
                is_known = next_known is not None and next_known[0] == rel
                if is_known:
                    stored_fp = next_known[1]
                    next_known = next(known, None)
                    if entry is None or (not full and stored_fp == fingerprint_of(entry.st)):
                        batch.unchanged += 1
                        continue
                elif entry is None:
                    continue
                group.append((entry, is_known))
                if len(group) >= _HASH_GROUP:
                    pending.append(pool.submit(self._hash_group, group))
                    group = []
                    yield from drain(max_pending)
                if len(batch.changes) >= BATCH_LIMIT:
                    yield self._with_walk_failures(batch)
                    batch = Batch()
            if group:
                pending.append(pool.submit(self._hash_group, group))
            yield from drain(0)
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
