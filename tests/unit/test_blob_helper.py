"""The blob helper process: same store layout as BlobStore, errors reported, threads when it can't start."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from kmrl_sync import blob_helper
from kmrl_sync.blob_helper import BlobHelperError, HelperBlobWriter
from kmrl_sync.blobs import BlobStore, BlobWriteError
from kmrl_sync.connectors.imap.pipeline import BlobWriter, open_blob_writer
from kmrl_sync.documents import Upsert
from tests.support.blobs import blob_path
from tests.support.waiting import wait_until


def _upsert() -> Upsert:
    return Upsert("doc", "", {"sha256": "", "blob": "", "size": 0})


def test_helper_stores_blobs_as_the_store_does_and_counts_them_for_flush(tmp_path) -> None:
    store = BlobStore(tmp_path)
    writer = open_blob_writer(store)
    assert isinstance(writer, HelperBlobWriter)
    # empty, small, > pipe size, repeated (after a larger one in the reused buffer), larger than
    # the helper's reused buffer, then small again
    contents = [b"", b"hello", os.urandom(3 << 20), b"hello", os.urandom(blob_helper.RECEIVE_BUFFER + 1), b"bye"]
    upserts = [_upsert() for _ in contents]
    for data, upsert in zip(contents, upserts, strict=True):
        writer.put(data, upsert)
    writer.wait()
    for data, upsert in zip(contents, upserts, strict=True):
        digest = hashlib.sha256(data).hexdigest()
        assert upsert.version == upsert.metadata["sha256"] == digest
        assert upsert.metadata["size"] == len(data)
        assert upsert.metadata["blob"] == store.put_bytes(data).uri  # the very same file
        with open(blob_path(upsert.metadata["blob"]), "rb") as fh:
            assert fh.read() == data
    assert not [p for p in tmp_path.rglob(".tmp-*")]
    assert store._written == 2 * len(contents) and store._synced == 0
    store.flush()
    assert store._synced == store._written
    writer.close()
    assert writer._proc.returncode == 0


def test_many_blobs_without_waiting_never_block_on_replies(tmp_path) -> None:
    store = BlobStore(tmp_path)
    writer = open_blob_writer(store)
    upserts = [_upsert() for _ in range(3 * blob_helper.MAX_UNANSWERED)]
    for i, upsert in enumerate(upserts):
        writer.put(str(i).encode(), upsert)
    writer.close()  # waits for every reply
    assert all(u.version == hashlib.sha256(str(i).encode()).hexdigest() for i, u in enumerate(upserts))


def test_a_blob_that_cannot_be_stored_fails_the_wait_and_the_rest_are_stored(tmp_path) -> None:
    store = BlobStore(tmp_path)
    writer = open_blob_writer(store)
    writer.put(b"first", _upsert())
    writer.wait()  # the fan-out folders exist now
    bad = b"cannot be stored"
    folder = tmp_path / "sha256" / hashlib.sha256(bad).hexdigest()[:2]
    os.rmdir(folder)
    folder.write_bytes(b"not a folder")
    good = _upsert()
    writer.put(bad, _upsert())
    writer.put(b"fine", good)
    with pytest.raises(BlobWriteError, match=rf"cannot write to the blob store {tmp_path}: Not a directory"):
        writer.wait()
    assert good.version == hashlib.sha256(b"fine").hexdigest()
    writer.close()


def test_a_helper_that_dies_is_reported(tmp_path) -> None:
    writer = open_blob_writer(BlobStore(tmp_path))
    writer.put(b"one", _upsert())
    writer.wait()
    os.kill(writer._proc.pid, signal.SIGKILL)
    writer._proc.wait()
    with pytest.raises(BlobHelperError, match="blob helper process exited"):
        for _ in range(100):  # the pipe may take a few writes to notice
            writer.put(os.urandom(1 << 16), _upsert())
        writer.wait()
    writer.close()


def test_threads_take_over_when_the_helper_cannot_start(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(blob_helper, "_command", lambda root: ["/bin/false"])
    writer = open_blob_writer(BlobStore(tmp_path))
    upsert = _upsert()
    writer.put(b"data", upsert)
    writer.wait()
    assert isinstance(writer._fallback, BlobWriter)
    assert upsert.version == hashlib.sha256(b"data").hexdigest()
    writer.close()


def test_threads_take_over_when_the_store_is_not_writable_by_the_helper(tmp_path) -> None:
    (tmp_path / "sha256").write_bytes(b"in the way")  # the helper cannot create its folders
    writer = open_blob_writer(BlobStore(tmp_path))
    with pytest.raises(BlobWriteError, match=f"blob store {tmp_path}: Not a directory"):  # the threads then
        writer.put(b"data", _upsert())                                              # report the real error
        writer.wait()
    assert isinstance(writer._fallback, BlobWriter)
    writer.close()


def test_the_helper_exits_when_its_parent_is_killed(tmp_path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from kmrl_sync.blobs import BlobStore\n"
        "from kmrl_sync.connectors.imap.pipeline import open_blob_writer\n"
        "from kmrl_sync.documents import Upsert\n"
        f"writer = open_blob_writer(BlobStore(Path({str(tmp_path)!r})))\n"
        "writer.put(b'x', Upsert('d', '', {}))\n"
        "writer.wait()\n"
        "print(writer._proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    helper_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()

    def gone() -> bool:
        try:
            os.kill(helper_pid, 0)
            with open(f"/proc/{helper_pid}/stat") as fh:  # reaped by init, or a zombie: gone either way
                return fh.read().split(") ")[1].startswith("Z")
        except (ProcessLookupError, FileNotFoundError):
            return True

    wait_until(gone, 5, "the blob helper to exit after its parent was killed", interval=0.02)


def test_threads_take_over_from_a_helper_that_never_answers(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(blob_helper, "_command", lambda root: ["sleep", "30"])
    monkeypatch.setattr(blob_helper, "READY_SECONDS", 0.2)
    writer = open_blob_writer(BlobStore(tmp_path))
    upsert = _upsert()
    writer.put(b"data", upsert)
    writer.wait()
    assert isinstance(writer._fallback, BlobWriter) and writer._proc.returncode is not None
    assert upsert.version == hashlib.sha256(b"data").hexdigest()
    writer.close()


def test_the_helpers_receive_buffer_is_reused_and_bounded() -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"abcde" + b"xyz" + b"0123456789" + b"tail")
    os.close(write_end)
    receiver = blob_helper._Receiver(limit=8)
    first = receiver.receive(read_end, 5)
    assert first is not None and bytes(first) == b"abcde"
    second = receiver.receive(read_end, 3)  # fits: the same buffer, only its own bytes
    assert second is not None and bytes(second) == b"xyz" and second.obj is first.obj
    large = receiver.receive(read_end, 10)  # over the limit: a buffer of its own, not kept
    assert large is not None and bytes(large) == b"0123456789" and len(receiver._view) == 5
    assert receiver.receive(read_end, 5) is None  # the input ended after 4 of 5 bytes
    os.close(read_end)


def test_a_helper_started_early_writes_for_the_store_that_adopts_it(tmp_path) -> None:
    started = HelperBlobWriter(BlobStore(tmp_path / "store"), fallback=lambda: pytest.fail("not adopted"))
    store = BlobStore(tmp_path / "store")  # the run's own instance, created later
    writer = open_blob_writer(store, started)
    assert writer is started
    upsert = _upsert()
    writer.put(b"early", upsert)
    writer.wait()
    assert upsert.version == hashlib.sha256(b"early").hexdigest()
    assert store._written == 1  # counted where the run's flush looks
    writer.close()


def test_a_helper_started_for_another_store_is_stopped_and_replaced(tmp_path) -> None:
    started = HelperBlobWriter(BlobStore(tmp_path / "elsewhere"), fallback=lambda: pytest.fail("not adopted"))
    store = BlobStore(tmp_path / "store")
    writer = open_blob_writer(store, started)
    assert writer is not started and started._proc.returncode is not None
    upsert = _upsert()
    writer.put(b"data", upsert)
    writer.wait()
    assert store._written == 1 and blob_path(upsert.metadata["blob"]).is_relative_to(tmp_path / "store")
    assert not list((tmp_path / "elsewhere").rglob(hashlib.sha256(b"data").hexdigest()))
    writer.close()
    used = open_blob_writer(store)
    used.put(b"x", _upsert())
    assert not used.adopt(store, lambda: None)  # a writer that already sent a blob keeps its store
    used.close()


def test_a_helper_whose_parent_stopped_listening_exits_quietly(tmp_path) -> None:
    """The parent's run ended before the helper said READY: no traceback on the user's terminal."""
    import subprocess

    replies_read, replies_write = os.pipe()
    os.close(replies_read)  # nobody will read the helper's READY
    try:
        helper = subprocess.run(blob_helper._command(str(tmp_path)), stdin=subprocess.DEVNULL, stdout=replies_write,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(replies_write)
    assert helper.returncode == 0 and helper.stderr == b""
