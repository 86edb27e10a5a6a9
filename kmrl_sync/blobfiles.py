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
import hashlib
import os
from collections.abc import Iterator

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def start_writeback(fd: int) -> None:
    """Have the kernel start writing the file out now, without waiting for it.

    The store's `flush()` must make every blob durable before the commit that points at it. Left
    to the kernel, the data stays dirty until then and the sync writes all of it while the commit
    waits (57 ms for a 500-mail IMAP batch here); started at once, it is written while the rest of
    the batch is made. POSIX_FADV_DONTNEED starts writeback of dirty pages and drops only clean
    ones, and a just-written page is dirty or under writeback, so the content stays cached for the
    workers (checked with fincore).
    """
    with contextlib.suppress(AttributeError, OSError):  # not here: flush() still syncs everything
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@contextlib.contextmanager
def discarded_on_error(tmp: str, fd: int, writeback: bool = False) -> Iterator[None]:
    """Close the temporary file (its writeback started, if asked); remove it if writing it failed."""
    try:
        yield
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    if writeback:
        start_writeback(fd)
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


def write_blob(objects: str, data: bytes, unique: str, writeback: bool = False) -> tuple[str, str]:
    """Store `data` (the fan-out folders exist); returns its sha256 and its path.

    `writeback` starts writing it out at once (see start_writeback): worth it off the critical
    path, in the blob helper; for many small blobs written inline (SharePoint's 10 KB files) the
    extra system call cost 15 % of the run, more than the later sync saved.
    """
    digest = hashlib.sha256(data).hexdigest()
    tmp = f"{objects}/{digest[:2]}/.tmp-{unique}"
    try:
        fd = os.open(tmp, OPEN_FLAGS, 0o644)
    except FileNotFoundError:  # its fan-out folder was removed since the store was prepared
        os.makedirs(f"{objects}/{digest[:2]}", exist_ok=True)
        fd = os.open(tmp, OPEN_FLAGS, 0o644)
    with discarded_on_error(tmp, fd, writeback):
        write_all(fd, data)
    return digest, install(tmp, objects, digest)
