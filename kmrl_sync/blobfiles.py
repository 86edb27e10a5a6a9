"""The blob store's files: where a blob lives and how one is written. Standard library only.

Kept apart from `blobs` so that the blob helper process (blob_helper.py) can import it without
the rest of the package: it starts in about 10 ms and writes the very same layout.

Blobs are written to a temporary name and renamed into `sha256/ab/<digest>`, so a reader never
sees a partial blob and writing the same content twice is free. The temporary file (`.tmp-...`,
never a 64-hex name) lives in the blob's own fan-out folder: creating every file in one shared
folder and renaming it across folders serialised writers on that folder's lock and piled ext4's
inode allocation into one block group (3x the kernel time when a store is refilled after a wipe;
bench/imap).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from collections.abc import Iterator

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class BlobWriteError(RuntimeError):
    """The store could not take content (full, read-only, not ours): the run fails.

    Not an OSError on purpose: connectors report an OSError while reading their source as that one
    document's failure ("cannot read"), and a store that cannot be written is nobody's document.
    Nothing is committed that would point at content that is not there.
    """


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
