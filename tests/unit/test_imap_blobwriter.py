"""The IMAP connector's blob writer: the store's layout, documents completed, errors as BlobWriteError."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from kmrl_sync.connectors.imap import blobwriter
from kmrl_sync.connectors.imap.blobwriter import BlobWriter
from kmrl_sync.content.folder import FolderStore
from kmrl_sync.content.store import BlobWriteError
from kmrl_sync.engine.documents import Upsert
from tests.support.blobs import blob_path
from tests.support.waiting import wait_until


def _upsert() -> Upsert:
    return Upsert("doc", "", {"sha256": "", "blob": "", "size": 0})


def test_blobs_are_stored_as_the_store_stores_them_and_counted_for_flush(tmp_path) -> None:
    store = FolderStore(tmp_path)
    writer = BlobWriter(store)
    contents = [b"", b"hello", os.urandom(3 << 20), b"hello", b"bye"]
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
    assert not list(tmp_path.rglob(".tmp-*"))
    assert store._written == 2 * len(contents) and store._synced == 0
    store.flush()
    assert store._synced == store._written
    writer.close()


def test_content_waiting_to_be_written_stays_bounded(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(blobwriter, "MAX_PENDING_BYTES", 1000)
    monkeypatch.setattr(blobwriter, "MAX_PENDING_WRITES", 5)
    release = threading.Event()
    store = FolderStore(tmp_path)
    real = store.put_bytes

    def stalled(data: bytes):
        release.wait(30)
        return real(data)

    store.put_bytes = stalled  # type: ignore[method-assign]
    writer = BlobWriter(store)
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def produce() -> None:
        for size in [300] * 10 + [10] * 20:
            writer.put(bytes(size), _upsert())
            seen.append((len(writer._pending), writer._pending_bytes))
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    wait_until(lambda: len(seen) == 3, 10, "three writes handed over")
    assert not done.is_set() and len(seen) == 3  # the fourth 300 bytes would exceed 1000: put waits
    release.set()
    assert done.wait(30)
    writer.close()
    assert all(count <= 5 and size <= 1000 for count, size in seen), seen
    assert any(count == 5 for count, _size in seen)  # the count bound held the small ones back


def test_a_blob_that_cannot_be_stored_fails_the_wait_and_the_rest_are_stored(tmp_path) -> None:
    store = FolderStore(tmp_path)
    writer = BlobWriter(store)
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


def test_a_store_that_cannot_be_prepared_is_reported(tmp_path) -> None:
    (tmp_path / "sha256").write_bytes(b"in the way")
    writer = BlobWriter(FolderStore(tmp_path))
    writer.put(b"data", _upsert())
    with pytest.raises(BlobWriteError, match=f"blob store {tmp_path}: (Not a directory|File exists)"):
        writer.wait()
    writer.close()
