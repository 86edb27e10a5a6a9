"""The content store in a local folder (the default: <state_dir>/blobs).

Blobs are written to a temporary name and renamed into `sha256/ab/<digest>`, so a reader never
sees a partial blob and writing the same content twice is free. The temporary file (`.tmp-...`,
never a 64-hex name) lives in the blob's own fan-out folder: creating every file in one shared
folder and renaming it across folders serialised writers on that folder's lock and piled ext4's
inode allocation into one block group (3x the kernel time when a store is refilled after a wipe;
bench/imap).

Durability is batched: instead of one fsync per file, `flush()` syncs the whole filesystem once
(syncfs) before the commit that points at the new blobs, which is what makes "a crash at any
instant loses nothing" hold for content too. Content larger than `SPOOL_LIMIT` streams through
`tmp/` before its digest is known.

With a cipher, content goes through `cipher.encrypt` into `tmp/` and is renamed to the digest of its
plaintext; without one (the common case) nothing of the path above changes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.content.store import (
    DIGEST,
    BlobRef,
    BlobWriteError,
    Cipher,
    ContentStore,
    ContentUnavailable,
    Leftover,
    StoredObject,
    capped,
)

__all__ = ["FolderStore"]

SPOOL_LIMIT = 4 << 20  # streamed content up to this size is hashed in memory before it is written


GC_ASIDE = ".tmp-gc-"  # + digest: an object `delete` set aside (see FolderStore.delete)
OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_failure(root: str | os.PathLike[str], code: int | None, detail: str) -> BlobWriteError:
    """The error for a failed write into the store at `root`, naming the store and why."""
    reason = f"disk full ({detail})" if code in DISK_FULL else detail
    return BlobWriteError(f"cannot write to the blob store {os.fspath(root)}: {reason}")


def os_failure(root: str | os.PathLike[str], exc: OSError) -> BlobWriteError:
    detail = exc.strerror or str(exc)
    if exc.filename and exc.errno not in DISK_FULL:
        detail += f": {os.fsdecode(exc.filename)}"
    return write_failure(root, exc.errno, detail)


def blob_location(objects: str, digest: str) -> str:
    # One level of 256 folders: a second level would create a folder for almost every new blob
    # (65,536 of them), which costs more than the blob itself on a cold store.
    return f"{objects}/{digest[:2]}/{digest}"


def make_folders(objects: str, tmp: str) -> None:
    """Create the 256 fan-out folders once, instead of checking for one on every write.

    They are created in order, so the last one existing means all do: one stat instead of 257
    mkdir calls (15 ms) for a store that is already there. A folder removed by hand since is
    recreated by `write_blob`.
    """
    if os.path.isdir(f"{objects}/ff") and os.path.isdir(tmp):
        return
    os.makedirs(tmp, exist_ok=True)
    for i in range(256):
        os.makedirs(f"{objects}/{i:02x}", exist_ok=True)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def discarded_on_error(tmp: str, fd: int) -> Iterator[None]:
    """Close the temporary file; remove it if writing it failed."""
    try:
        yield
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)


def install(tmp: str, objects: str, digest: str) -> str:
    """Rename a complete temporary file to its blob's name; returns that name.

    Content-addressed: replacing an existing blob puts identical bytes under the same name, so no
    existence check is needed (a stat per blob costs more than the rare duplicate write), and the
    rename is atomic: readers never see a partial blob.
    """
    final = blob_location(objects, digest)
    os.replace(tmp, final)
    return final


def write_blob(objects: str, data: bytes | memoryview, unique: str) -> tuple[str, str]:
    """Store `data` (the fan-out folders exist); returns its sha256 and its path.

    Nothing here starts the writeback: the store's `flush()` (one `syncfs` before each commit)
    writes a whole batch out at once. Starting each blob's writeback as it was written
    (`posix_fadvise(DONTNEED)`) shortened that sync, but submitting the I/O file by file cost more
    CPU than it saved on a 2-CPU machine (bench/README.md).
    """
    digest = hashlib.sha256(data).hexdigest()
    tmp = f"{objects}/{digest[:2]}/.tmp-{unique}"
    try:
        fd = os.open(tmp, OPEN_FLAGS, 0o644)
    except FileNotFoundError:  # its fan-out folder was removed since the store was prepared
        os.makedirs(f"{objects}/{digest[:2]}", exist_ok=True)
        fd = os.open(tmp, OPEN_FLAGS, 0o644)
    with discarded_on_error(tmp, fd):
        write_all(fd, data)
    return digest, install(tmp, objects, digest)


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


class FolderStore(ContentStore):
    def __init__(self, root: str | os.PathLike[str], cipher: Cipher | None = None):
        super().__init__(StoreSettings(folder=Path(root)), cipher)
        self.root = Path(root)
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
                make_folders(self._objects, self._tmp)
            except OSError as exc:
                raise os_failure(self.root, exc) from exc
            self._ready = True

    @property
    def objects(self) -> str:
        """The folder of the fan-out folders (see blob_location)."""
        return self._objects

    def _unique(self) -> str:
        return f"{os.getpid()}-{id(self):x}-{threading.get_ident()}-{next(self._tmp_names)}"

    def _record_written(self) -> None:
        """Count a blob written into this store: the next `flush()` covers it."""
        with self._lock:
            self._written += 1

    @property
    def uri_base(self) -> str:
        return self._uri_objects

    def uri(self, digest: str) -> str:
        """The absolute `file://` URI of the blob with this digest (the documents' `blob` field)."""
        return f"{self._uri_objects}/{digest[:2]}/{digest}"

    def path(self, uri_or_digest: str) -> Path:
        """Where this process finds an object of this store."""
        return Path(blob_location(self._objects, self.digest_of(uri_or_digest)))

    def put_bytes(self, data: bytes) -> BlobRef:
        """Store `data`; raises BlobWriteError (naming the store, "disk full") when it cannot."""
        if self.cipher is not None:
            # held in memory once more as ciphertext only up to SPOOL_LIMIT; larger content streams
            if len(data) > SPOOL_LIMIT:
                return self._put_encrypted((data,))
            return self._put_encrypted_bytes(data)
        self._prepare()
        try:
            digest, _path = write_blob(self._objects, data, self._unique())
        except OSError as exc:
            raise os_failure(self.root, exc) from exc
        self._record_written()
        return self.ref(digest, len(data))

    def put_chunks(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobRef:
        """Stream content in (held in memory only up to SPOOL_LIMIT); refuse more than max_size bytes."""
        chunks = capped(chunks, max_size)
        spooled: list[bytes] = []
        size = 0
        for chunk in chunks:
            spooled.append(chunk)
            size += len(chunk)
            if size > SPOOL_LIMIT:
                break
        else:
            return self.put_bytes(b"".join(spooled))
        if self.cipher is not None:
            return self._put_encrypted(itertools.chain(spooled, chunks))
        self._prepare()
        tmp = f"{self._tmp}/{self._unique()}"
        try:
            fd = os.open(tmp, OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise os_failure(self.root, exc) from exc
        hasher, size = hashlib.sha256(), 0
        with discarded_on_error(tmp, fd):
            # Reading the source may fail too (that is the document's failure, raised as it is);
            # only a failed write is the store's.
            for chunk in itertools.chain(spooled, chunks):
                hasher.update(chunk)
                try:
                    write_all(fd, chunk)
                except OSError as exc:
                    raise os_failure(self.root, exc) from exc
                size += len(chunk)
        return self._install(tmp, hasher.hexdigest(), size)

    def _install(self, tmp: str, digest: str, size: int) -> BlobRef:
        try:
            try:
                install(tmp, self._objects, digest)
            except FileNotFoundError:  # its fan-out folder was removed since the store was prepared
                os.makedirs(f"{self._objects}/{digest[:2]}", exist_ok=True)
                install(tmp, self._objects, digest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise os_failure(self.root, exc) from exc
        self._record_written()
        return self.ref(digest, size)

    def _put_encrypted_bytes(self, data: bytes) -> BlobRef:
        """Content held in memory, encrypted: hashed first, so its ciphertext is written beside its
        final name (a `.tmp-` file in its own fan-out folder, as unencrypted content is) rather than
        through the shared tmp/ folder, whose one directory every writer thread created its files in
        (a 2,000-file encrypted snapshot spent 1.6x the time of an unencrypted one; bench/crypto)."""
        assert self.cipher is not None
        self._prepare()
        digest = hashlib.sha256(data).hexdigest()
        tmp = f"{self._objects}/{digest[:2]}/.tmp-{self._unique()}"
        try:
            try:
                fd = os.open(tmp, OPEN_FLAGS, 0o644)
            except FileNotFoundError:  # its fan-out folder was removed since the store was prepared
                os.makedirs(f"{self._objects}/{digest[:2]}", exist_ok=True)
                fd = os.open(tmp, OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise os_failure(self.root, exc) from exc
        with discarded_on_error(tmp, fd):
            try:
                write_all(fd, b"".join(self.cipher.encrypt((data,))))  # one write, as unencrypted
            except OSError as exc:
                raise os_failure(self.root, exc) from exc
        return self._install(tmp, digest, len(data))

    def _put_encrypted(self, chunks: Iterable[bytes]) -> BlobRef:
        """The plaintext hashed on its way into the cipher; the ciphertext into tmp/, renamed to the digest."""
        assert self.cipher is not None
        self._prepare()
        hasher, size = hashlib.sha256(), 0

        def plaintext() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        tmp = f"{self._tmp}/{self._unique()}"
        try:
            fd = os.open(tmp, OPEN_FLAGS, 0o644)
        except OSError as exc:
            raise os_failure(self.root, exc) from exc
        with discarded_on_error(tmp, fd):
            for out in self.cipher.encrypt(plaintext()):
                try:
                    write_all(fd, out)
                except OSError as exc:
                    raise os_failure(self.root, exc) from exc
        return self._install(tmp, hasher.hexdigest(), size)

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
                raise os_failure(self.root, exc) from exc
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
                        raise write_failure(self.root, code, os.strerror(code))
            finally:
                os.close(fd)
            self._synced = covered  # only ever written here, under _flush_lock


    def check(self) -> None:
        self._prepare()
        if not os.access(self._objects, os.W_OK | os.X_OK):
            raise write_failure(self.root, errno.EACCES, f"{self._objects} is not writable by this user")

    # ----------------------------------------------------------------- reading

    def open_stored(self, uri_or_digest: str) -> BinaryIO:
        path = self.path(uri_or_digest)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise ContentUnavailable(f"{uri_or_digest!r} is not in the content store {self.name}") from None

    # ----------------------------------------------------------------- retention

    def list_objects(self) -> Iterator[StoredObject]:
        for folder in _entries(self._objects):
            if not folder.is_dir(follow_symlinks=False) or len(folder.name) != 2:
                continue
            for entry in _entries(folder.path):
                if DIGEST.fullmatch(entry.name) and entry.name[:2] == folder.name:
                    with contextlib.suppress(FileNotFoundError):  # deleted since it was listed
                        st = entry.stat(follow_symlinks=False)
                        yield StoredObject(entry.name, st.st_size, st.st_mtime)

    def delete(self, digest: str, *, unless_modified_after: float | None = None) -> bool:
        """Delete an object; with `unless_modified_after`, race-free against writers.

        The object is first renamed aside (atomic): a writer installing the same content at the
        same instant either lands before the rename (then the file aside is fresh and is renamed
        back) or after it (then its new file stays where it is and only the old one aside is
        deleted). A gc killed between the two renames leaves the object aside as a `.tmp-gc-`
        leftover, which `delete_leftover` puts back rather than deleting.
        """
        digest = self.digest_of(digest)
        final = blob_location(self._objects, digest)
        if unless_modified_after is None:
            try:
                os.unlink(final)
            except FileNotFoundError:
                return False
            return True
        aside = f"{self._objects}/{digest[:2]}/{GC_ASIDE}{digest}-{self._unique()}"
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        if os.stat(aside).st_mtime > unless_modified_after:
            os.replace(aside, final)  # same bytes as any newer copy a writer put there meanwhile
            return False
        os.unlink(aside)
        return True

    def list_leftovers(self) -> Iterator[Leftover]:
        folders = [self._tmp] + [f.path for f in _entries(self._objects) if f.is_dir(follow_symlinks=False)]
        for folder in folders:
            for entry in _entries(folder):
                in_tmp = folder == self._tmp
                if in_tmp or entry.name.startswith(".tmp-"):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        name = os.path.relpath(entry.path, self.root)
                        yield Leftover(name, st.st_size, st.st_mtime)

    def delete_leftover(self, leftover: Leftover) -> None:
        path = os.path.normpath(os.path.join(self.root, leftover.name))
        if not (path.startswith(self._tmp + os.sep) or os.path.basename(path).startswith(".tmp-")):
            raise ValueError(f"{leftover.name!r} is not a leftover of the content store {self.name}")
        name = os.path.basename(path)
        if name.startswith(GC_ASIDE):  # a killed gc's object set aside: put back, unless a writer did
            final = blob_location(self._objects, name.removeprefix(GC_ASIDE)[:64])
            with contextlib.suppress(FileNotFoundError):
                if not os.path.exists(final):
                    os.rename(path, final)
                    return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _entries(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
