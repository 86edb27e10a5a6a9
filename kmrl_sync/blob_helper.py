"""Blob writing in a helper process, so the process that parses never waits for file creation.

Why a process and not threads: writing one blob is four system calls (open, write, close, rename),
and after each one a writer thread must win the GIL back. Beside a CPU-bound parser it waits for
the parser's switch interval every time: on writer threads the blobs of a 500-mail IMAP sync were
written almost entirely while the parser stood waiting for them (about 90 ms of the run;
bench/imap). A process of its own writes them on the other core while the parser goes on; the
parser's cost per blob is one pipe write.

Protocol, over the helper's stdin and stdout, in order: a request is a 4-byte big-endian length and
the content; the reply is b"+" and the 32-byte sha256 once the blob is in the store (written, not
yet synced: the store's `flush()` does that), or b"-", the 2-byte errno, a 2-byte length and a
UTF-8 message when it could not be stored (the caller raises BlobWriteError: "disk full" for
ENOSPC/EDQUOT). Before any reply the helper sends READY; a helper that cannot start (no
interpreter, store not writable) is replaced by writer threads before anything was sent to it, so
the run goes on. The helper runs `python -I -S` and imports only the standard library and
`blobfiles`, so it is ready about 10 ms after it is started; the caller starts it while it waits
for its source anyway.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kmrl_sync import blobfiles

if TYPE_CHECKING:
    from kmrl_sync.blobs import BlobStore

HEADER = struct.Struct("!I")
READY = b"R"  # the helper's first byte: it started and can write into the store
READY_SECONDS = 10.0  # a helper silent for this long is given up (and threads write instead)
MAX_UNANSWERED = 256  # replies are 33 bytes: far below a pipe's 64 KiB, so the helper never blocks on them
PIPE_BYTES = 1 << 20  # a larger pipe lets the parser hand over a whole mail without waiting
RECEIVE_BUFFER = 4 << 20  # the helper's reused buffer: blobs up to this size are read into it


class BlobHelperError(OSError):
    pass


# --------------------------------------------------------------------------- helper process side


def _read_exactly(fd: int, size: int) -> bytes | None:
    buffer = bytearray(size)
    return bytes(buffer) if _read_into(fd, memoryview(buffer)) else None


def _read_into(fd: int, view: memoryview) -> bool:
    """Fill `view` from `fd`; False when the input ended first."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            return False
        got += n
    return True


class _Receiver:
    """The content of each request, read into one buffer that is reused from blob to blob.

    Why: reading each blob into a fresh buffer and copying it into `bytes` copied every byte of
    every blob once more, on the core that also creates the files (6 % of the helper's
    instructions for 800 blobs, callgrind). The buffer grows to the largest blob seen up to
    `limit`; a larger blob gets a buffer of its own, so the helper's memory stays bounded.
    """

    def __init__(self, limit: int = RECEIVE_BUFFER):
        self._limit = limit
        self._view = memoryview(bytearray())

    def receive(self, fd: int, size: int) -> memoryview | None:
        """The next `size` bytes of `fd`, valid until the next call; None when the input ended."""
        if size > self._limit:
            view = memoryview(bytearray(size))
        else:
            if size > len(self._view):
                self._view = memoryview(bytearray(size))
            view = self._view[:size]
        return view if _read_into(fd, view) else None


def serve(root: str, stdin: int = 0, stdout: int = 1) -> None:
    """The helper's loop: say READY, store every blob it is sent, answer each; end with the input.

    A parent that stopped listening (its run ended, e.g. a login refused before READY was read)
    ends the helper quietly: its stderr is the user's terminal, where a traceback would be noise.
    """
    try:
        _serve(root, stdin, stdout)
    except BrokenPipeError:
        return


def _serve(root: str, stdin: int, stdout: int) -> None:
    objects = os.path.join(root, "sha256")
    try:
        blobfiles.make_folders(objects, os.path.join(root, "tmp"))
    except OSError:
        return  # no READY: the caller writes with threads, which report the error per blob
    blobfiles.write_all(stdout, READY)
    prefix = f"{os.getpid()}-helper-"
    count = 0
    receiver = _Receiver()
    while True:
        header = _read_exactly(stdin, HEADER.size)
        if header is None:
            return
        data = receiver.receive(stdin, HEADER.unpack(header)[0])
        if data is None:
            return
        count += 1
        try:
            digest, _path = blobfiles.write_blob(objects, data, f"{prefix}{count}")
            reply = b"+" + bytes.fromhex(digest)
        except OSError as exc:
            message = (exc.strerror or str(exc)).encode("utf-8", "replace")[:4000]
            reply = b"-" + struct.pack("!HH", (exc.errno or 0) & 0xFFFF, len(message)) + message
        blobfiles.write_all(stdout, reply)


# --------------------------------------------------------------------------- caller side


def _command(root: str) -> list[str]:
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(blobfiles.__file__)))
    code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            f"from kmrl_sync.blob_helper import serve; serve({root!r}); import os; os._exit(0)")
    return [sys.executable, "-I", "-S", "-c", code]


def _send(fd: int, header: bytes, data: bytes) -> None:
    """Header and content in one system call when the pipe takes them (it mostly does)."""
    sent = os.writev(fd, [header, data])
    if sent < len(header):
        blobfiles.write_all(fd, header[sent:])
        sent = len(header)
    if sent - len(header) < len(data):
        blobfiles.write_all(fd, memoryview(data)[sent - len(header):])


def _answers_within(fd: int, seconds: float) -> bool:
    import select

    return bool(select.select([fd], [], [], seconds)[0])


def _grow_pipe(fd: int) -> None:
    import fcntl

    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is not None:
        with contextlib.suppress(OSError):  # capped by /proc/sys/fs/pipe-max-size: 64 KiB works too
            fcntl.fcntl(fd, setsize, PIPE_BYTES)


class HelperBlobWriter:
    """A ContentWriter (imap/pipeline.py) whose writes are done by a helper process.

    If the helper does not come up, the writes go to `fallback()` (writer threads) instead.
    """

    def __init__(self, blobs: BlobStore, fallback: Callable[[], Any]):
        self.blobs = blobs
        self._fallback_factory = fallback
        self._fallback: Any = None
        self._proc: Any = None
        self._started = threading.Event()
        self._ready = False
        self._unanswered: deque[tuple[int, Any]] = deque()  # (size, upsert) per request sent
        self._failed: blobfiles.BlobWriteError | None = None
        # fork and exec take ~8 ms of the caller's thread; on a thread of their own they overlap
        # the caller's wait for its source
        threading.Thread(target=self._spawn, name="blob-helper-start", daemon=True).start()

    def adopt(self, blobs: BlobStore, fallback: Callable[[], Any]) -> bool:
        """Write into `blobs` from now on: a helper started before the run's store existed.

        False (and nothing changes) when `blobs` is another store, or a blob was already sent.
        """
        if os.path.abspath(blobs.root) != os.path.abspath(self.blobs.root) or self._ready:
            return False
        self.blobs = blobs
        self._fallback_factory = fallback
        return True

    def _spawn(self) -> None:
        import subprocess

        try:
            self._proc = subprocess.Popen(_command(str(self.blobs.root)), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, bufsize=0, close_fds=True)
            self._out = self._proc.stdin.fileno()
            self._in = self._proc.stdout.fileno()
            _grow_pipe(self._out)
        except OSError:
            self._proc = None
        finally:
            self._started.set()

    def _start(self) -> None:
        """Wait for READY (the helper had the caller's wait for its source to start)."""
        self._ready = True
        self._started.wait()
        if self._proc is None or not _answers_within(self._in, READY_SECONDS) \
                or _read_exactly(self._in, 1) != READY:
            self._fallback = self._fallback_factory()
            self._stop()

    def put(self, data: bytes, upsert: Any) -> None:
        """Send `data`; `upsert` gets its version, sha256, size and blob path when the reply is read."""
        if not self._ready:
            self._start()
        if self._fallback is not None:
            self._fallback.put(data, upsert)
            return
        if len(self._unanswered) >= MAX_UNANSWERED:
            self._answer(len(self._unanswered) // 2)
        try:
            _send(self._out, HEADER.pack(len(data)), data)
        except BrokenPipeError:
            raise self._died() from None
        self._unanswered.append((len(data), upsert))

    def bound_memory(self) -> None:
        """Nothing to do: the content is in the helper's hands as soon as `put` returns."""

    def _died(self) -> BlobHelperError:
        status = self._proc.wait()
        return BlobHelperError(f"the blob helper process exited (status {status})")

    def _answer(self, count: int) -> None:
        written = 0
        try:
            for _ in range(count):
                size, upsert = self._unanswered.popleft()
                status = _read_exactly(self._in, 1)
                if status == b"+":
                    digest = (_read_exactly(self._in, 32) or b"").hex()
                    if len(digest) != 64:
                        raise self._died()
                    upsert.stored_as(digest, size, self.blobs.uri(digest))
                    written += 1
                elif status == b"-":
                    code, length = struct.unpack("!HH", _read_exactly(self._in, 4) or b"\0\0\0\0")
                    message = (_read_exactly(self._in, length) or b"").decode("utf-8", "replace")
                    self._failed = self._failed or blobfiles.write_failure(self.blobs.root, code, message)
                else:
                    raise self._died()
        finally:
            self.blobs.record_written(written)

    def wait(self) -> None:
        """Every blob sent so far is in the store (not yet synced: the engine's flush does that)."""
        if self._fallback is not None:
            self._fallback.wait()
            return
        self._answer(len(self._unanswered))
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def _stop(self) -> None:
        self._started.wait()
        if self._proc is None:
            return
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self._proc.wait(timeout=0 if self._fallback is not None else 5)
        except Exception:
            self._proc.kill()
            self._proc.wait()

    def close(self) -> None:
        try:
            if self._fallback is not None:
                self._fallback.close()
            elif self._ready and self._proc is not None and self._proc.poll() is None:
                self.wait()
        finally:
            self._stop()
