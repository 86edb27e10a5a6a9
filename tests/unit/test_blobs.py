"""The blob store: content addressing, size caps, and flushes shared by concurrent runs."""

from __future__ import annotations

import hashlib
import os
import sys
import threading

import pytest

from kmrl_sync.content import folder as blobs
from kmrl_sync.content.folder import FolderStore
from kmrl_sync.content.store import BlobTooLarge


def test_content_addressed_and_written_once(tmp_path):
    store = FolderStore(tmp_path)
    ref = store.put_bytes(b"hello")
    assert ref.sha256 == hashlib.sha256(b"hello").hexdigest() and store.path(ref.uri).read_bytes() == b"hello"
    assert store.path(ref.uri) == tmp_path / "sha256" / ref.sha256[:2] / ref.sha256
    again = store.put_chunks([b"hel", b"lo"])
    assert again == ref
    assert _leftovers(tmp_path) == []


def _leftovers(root) -> list[str]:
    """Anything in the store that is not a finished blob named by its digest."""
    if not (root / "sha256").exists():
        return []
    found = [p.name for p in (root / "tmp").iterdir()]
    for folder in (root / "sha256").iterdir():
        found += [p.name for p in folder.iterdir()
                  if p.name != hashlib.sha256(p.read_bytes()).hexdigest() or p.name[:2] != folder.name]
    return found


@pytest.mark.parametrize("spool_limit", [1 << 20, 8])  # held in memory / streamed through tmp/
def test_size_cap_leaves_nothing_behind(tmp_path, monkeypatch, spool_limit):
    monkeypatch.setattr(blobs, "SPOOL_LIMIT", spool_limit)
    store = FolderStore(tmp_path)
    with pytest.raises(BlobTooLarge):
        store.put_chunks([b"x" * 10, b"y" * 10], max_size=15)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("spool_limit", [1 << 20, 8, 25])
def test_streamed_content_gets_the_same_blob_whatever_its_size(tmp_path, monkeypatch, spool_limit):
    monkeypatch.setattr(blobs, "SPOOL_LIMIT", spool_limit)
    store = FolderStore(tmp_path)
    chunks = [b"a" * 10, b"b" * 10, b"c" * 10]
    ref = store.put_chunks(iter(chunks), max_size=30)
    assert ref == store.put_bytes(b"".join(chunks))
    assert ref.size == 30 and store.path(ref.uri).read_bytes() == b"".join(chunks)
    assert _leftovers(tmp_path) == []


def test_flush_syncs_only_when_needed_and_covers_other_threads(tmp_path, monkeypatch):
    calls = []
    gate = threading.Event()

    def slow_syncfs(fd):
        calls.append(fd)
        gate.wait(5)
        return 0

    monkeypatch.setattr(blobs, "_syncfs", lambda: slow_syncfs)
    store = FolderStore(tmp_path)
    store.flush()
    assert calls == []  # nothing written: nothing to sync
    store.put_bytes(b"a")
    first = threading.Thread(target=store.flush)
    first.start()
    while not calls:
        pass
    store.put_bytes(b"b")  # written while the first sync runs: that sync may not cover it
    second_done = threading.Event()
    second = threading.Thread(target=lambda: (store.flush(), second_done.set()))
    second.start()
    assert not second_done.wait(0.2)  # it must wait for a sync of its own, not return early
    gate.set()
    first.join(5)
    second.join(5)
    assert second_done.is_set() and len(calls) == 2
    store.flush()
    assert len(calls) == 2


@pytest.mark.skipif(sys.platform != "linux", reason="syncfs is Linux's")
def test_syncfs_is_found_without_a_library_search(tmp_path, monkeypatch) -> None:
    import ctypes.util

    blobs._syncfs.cache_clear()
    monkeypatch.setattr(ctypes.util, "find_library", lambda _name: pytest.fail("ran ldconfig"))
    syncfs = blobs._syncfs()
    assert syncfs is not None
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert syncfs(fd) == 0
    finally:
        os.close(fd)
        blobs._syncfs.cache_clear()


def test_a_fan_out_folder_removed_by_hand_is_recreated(tmp_path) -> None:
    import shutil

    store = FolderStore(tmp_path)
    first = store.put_bytes(b"one")
    shutil.rmtree(store.path(first.uri).parent)
    again = FolderStore(tmp_path)
    assert again.path(again.put_bytes(b"one").uri).read_bytes() == b"one"
