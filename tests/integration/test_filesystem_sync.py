"""The filesystem connector against a real Redis: names, globs, symlinks, change detection."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest

from kmrl_sync.connectors.filesystem import connector as filesystem
from kmrl_sync.connectors.filesystem import hashing as fshash
from kmrl_sync.engine.keys import doc_key
from tests.support.blobs import blob_path, read_blob
from tests.support.celery_messages import decode_queue
from tests.support.documents import document


def tasks(redis_client) -> Counter:
    return Counter((t.task, t.document_id) for t in decode_queue(redis_client))


def sync(project, name: str = "fs", **kwargs):
    return project.engine().run(name, wait=0, **kwargs)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


def test_odd_names_are_documents_like_any_other(project, tree, redis_client):
    names = ["with space.txt", "ünïcödé ഫയൽ.txt", "new\nline.txt", "-leading-dash.txt", "tab\there.txt",
             "sub dir/nested.pdf", "a/b/c/deep.docx", "#hash%percent.txt", "back\\slash.txt"]
    for name in names:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    project.filesystem("fs", tree)
    summary = sync(project)
    assert summary.result == "ok", summary
    assert tasks(redis_client) == Counter(("process_document", f"fs:{n}") for n in names)
    root = str(tree.resolve())
    for name in names:  # what the connector gave, restored from the compact stored form
        doc = document(redis_client, f"fs:{name}")
        assert doc["filename"] == name.rpartition("/")[2] and doc["department"] == "engineering"
        assert doc["path"] == name and doc["absolute_path"] == f"{root}/{name}"
        assert doc["source_url"] == "file://" + quote(f"{root}/{name}") and doc["blob"] == ""
        assert doc["sha256"] == doc["version"] and doc["size"] == str(len(name.encode()))
        assert doc["document_id"] == f"fs:{name}" and doc["connector"] == "fs" and doc["source"] == "filesystem"
    assert document(redis_client, "fs:a/b/c/deep.docx")["mime_type"] == (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    again = sync(project)
    assert (again.created, again.updated, again.deleted, again.unchanged) == (0, 0, 0, len(names))


def test_gitignore_style_globs(project, tree, redis_client):
    for name in ["top.pdf", "a/mid.pdf", "a/b/low.pdf", "a/skip.txt", "tmp/x.pdf", "a/~lock.pdf", "docs/r.txt"]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    project.filesystem("fs", tree, 'include: ["**/*.pdf", "docs/*.txt"]\nexclude: ["tmp/", "**/~*"]\n')
    sync(project)
    assert set(d for _, d in tasks(redis_client)) == {"fs:top.pdf", "fs:a/mid.pdf", "fs:a/b/low.pdf", "fs:docs/r.txt"}


def test_changes_edits_deletes_and_old_mtime_copies(project, tree, redis_client):
    for i in range(5):
        (tree / f"f{i}.txt").write_text(f"v1-{i}")
    project.filesystem("fs", tree)
    sync(project)
    redis_client.delete("document_processing")
    old = (tree / "f0.txt").stat()
    # Replaced by a copy with the same size and an old mtime (cp -p, rsync -t, an unzip).
    replacement = tree.parent / "incoming.txt"
    replacement.write_text("v2-0")
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, tree / "f0.txt")
    (tree / "f1.txt").unlink()
    (tree / "f2.txt").write_text("v2-2 longer")
    os.utime(tree / "f3.txt")  # touched, same content: nothing to send
    (tree / "new.txt").write_text("new")
    summary = sync(project)
    assert tasks(redis_client) == Counter([("process_document", "fs:f0.txt"), ("process_document", "fs:f2.txt"),
                                           ("process_document", "fs:new.txt"), ("delete_document", "fs:f1.txt")])
    assert (summary.created, summary.updated, summary.deleted) == (1, 2, 1)
    assert document(redis_client, "fs:f1.txt")["status"] == "deleted"


def test_no_change_rescan_reads_nothing_and_pages_redis(project, tree, redis_client, monkeypatch):
    for i in range(2500):
        d = tree / f"d{i % 7}"
        d.mkdir(exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(64))
    project.filesystem("fs", tree)
    assert sync(project).created == 2500
    engine = project.engine()
    reads = []
    original = filesystem.FilesystemConnector._hasher
    monkeypatch.setattr(filesystem.FilesystemConnector, "_hasher", lambda self: reads.append(1) or original(self))
    redis_client.config_resetstat()
    summary = engine.run("fs", wait=0)
    stats = redis_client.info("commandstats")
    assert reads == [] and summary.unchanged == 2500 and summary.queued == 0
    scripts_run = stats.get("cmdstat_evalsha", {}).get("calls", 0) + stats.get("cmdstat_eval", {}).get("calls", 0)
    assert scripts_run <= 3 + 2  # 3 pages of known ids + lease acquire/release


def test_full_rescan_rehashes_but_queues_nothing_unchanged(project, tree, redis_client):
    for i in range(10):
        (tree / f"f{i}").write_text(str(i))
    project.filesystem("fs", tree)
    sync(project)
    summary = sync(project, full=True)
    assert summary.unchanged == 10 and summary.queued == 0
    assert len(decode_queue(redis_client)) == 10


def test_symlinks_inside_root_loops_and_escapes(project, tree, tmp_path, redis_client):
    (tree / "real").mkdir()
    (tree / "real" / "doc.txt").write_text("x")
    (tree / "real" / "loop").symlink_to(tree)  # a loop back to the root
    (tree / "alias").symlink_to(tree / "real")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("no")
    (tree / "escape").symlink_to(outside)
    (tree / "escape.txt").symlink_to(outside / "secret.txt")
    (tree / "link.txt").symlink_to(tree / "real" / "doc.txt")
    project.filesystem("fs", tree)
    sync(project)
    assert set(d for _, d in tasks(redis_client)) == {"fs:real/doc.txt"}
    redis_client.delete("document_processing")
    project.filesystem("fs", tree, "follow_symlinks: true\n")
    summary = sync(project)
    assert summary.result == "ok"
    assert set(d for _, d in tasks(redis_client)) == {"fs:alias/doc.txt", "fs:link.txt"}


def test_min_age_skips_files_still_being_written(project, tree, redis_client):
    (tree / "old.txt").write_text("old")
    past = time.time() - 3600
    os.utime(tree / "old.txt", (past, past))
    (tree / "writing.txt").write_text("partial")
    project.filesystem("fs", tree, "min_age: 10m\n")
    sync(project)
    assert set(d for _, d in tasks(redis_client)) == {"fs:old.txt"}
    os.utime(tree / "writing.txt", (past, past))
    os.utime(tree / "old.txt")  # now young again: must not be deleted
    summary = sync(project)
    assert set(d for _, d in tasks(redis_client)) == {"fs:old.txt", "fs:writing.txt"}
    assert summary.deleted == 0


def test_snapshot_mode_copies_content_into_blob_store(project, tree, redis_client):
    (tree / "a.txt").write_bytes(b"snapshot me")
    project.filesystem("fs", tree, "snapshot: true\n")
    sync(project)
    doc = document(redis_client, "fs:a.txt")
    assert read_blob(doc["blob"]) == b"snapshot me"
    assert blob_path(doc["blob"]).name == doc["sha256"]
    assert b"blob" not in redis_client.hgetall(doc_key("kmrl", "fs:a.txt"))  # derived from the store and sha256


def test_unreadable_and_vanished_files_are_reported_and_the_run_goes_on(project, tree, redis_client, monkeypatch):
    for name in ["ok.txt", "locked.txt", "gone.txt"]:
        (tree / name).write_text(name)
    project.filesystem("fs", tree, "hash_workers: 0\n")  # in-process, so the patched os.open applies
    real_open = os.open

    def fake_open(path, *args, **kwargs):
        if str(path).endswith("locked.txt"):
            raise PermissionError(13, "Permission denied")
        if str(path).endswith("gone.txt"):
            raise FileNotFoundError(2, "No such file")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fshash.os, "open", fake_open)
    summary = sync(project)
    assert summary.result == "partial" and summary.failed == 1 and "locked.txt" in summary.failures[0]
    assert set(d for _, d in tasks(redis_client)) == {"fs:ok.txt"}
    monkeypatch.undo()
    summary = sync(project)
    assert summary.created == 2 and summary.result == "ok"


def test_unlistable_folder_keeps_what_was_known(project, tree, redis_client, monkeypatch):
    (tree / "sub").mkdir()
    (tree / "sub" / "a.txt").write_text("a")
    (tree / "b.txt").write_text("b")
    project.filesystem("fs", tree)
    sync(project)
    real_scandir = os.scandir

    def fake_scandir(path):
        if str(path).endswith("/sub"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(filesystem.os, "scandir", fake_scandir)
    summary = sync(project)
    assert summary.deleted == 0 and summary.failed == 1


def test_missing_root_fails_the_run_with_a_clear_error(project, tmp_path):
    project.filesystem("fs", tmp_path / "nope")
    result = project.cli("sync", "fs")
    assert result.returncode == 1
    assert "does not exist" in result.stdout


def test_batches_never_exceed_the_limit(project, tree, monkeypatch):
    from kmrl_sync.engine import state as state_module
    from kmrl_sync.engine.documents import BATCH_LIMIT

    for i in range(1300):
        (tree / f"f{i:04}").write_text(str(i))
    project.filesystem("fs", tree, "hash_workers: 2\n")
    sizes = []
    original = state_module.ConnectorState.prepare
    monkeypatch.setattr(state_module.ConnectorState, "prepare",
                        lambda self, batch, **kw: sizes.append(len(batch.changes)) or original(self, batch, **kw))
    assert sync(project).created == 1300
    assert sum(sizes) == 1300 and max(sizes) <= BATCH_LIMIT


@pytest.mark.parametrize("mode", ["", "snapshot: true\n"])
def test_a_file_swapped_for_a_symlink_after_the_listing_is_not_followed(project, tree, tmp_path, redis_client,
                                                                        monkeypatch, mode):
    outside = tmp_path / "outside.txt"
    outside.write_text("not under the root")
    (tree / "doc.txt").write_text("doc")
    project.filesystem("fs", tree, mode + "hash_workers: 0\n")
    listed = filesystem.FilesystemConnector._walk

    def walk_then_swap(self):
        for item in listed(self):
            (tree / "doc.txt").unlink()  # between the listing and the read
            (tree / "doc.txt").symlink_to(outside)
            yield item

    monkeypatch.setattr(filesystem.FilesystemConnector, "_walk", walk_then_swap)
    summary = sync(project)
    assert summary.failed == 1 and "doc.txt" in summary.failures[0]
    assert tasks(redis_client) == Counter()


@pytest.mark.parametrize("mode", ["", "snapshot: true\n"])
def test_files_over_max_file_mb_are_reported_not_read(project, tree, redis_client, mode):
    (tree / "small.txt").write_bytes(b"s" * 100)
    (tree / "big.bin").write_bytes(b"b" * 2000)
    project.filesystem("fs", tree, mode + "max_file_mb: 0.001\nhash_workers: 0\n")  # 1,048 bytes
    summary = sync(project)
    assert summary.created == 1 and summary.failed == 1
    assert summary.failures == ["fs:big.bin: larger than max_file_mb (2000 bytes)"]
    assert set(tasks(redis_client)) == {("process_document", "fs:small.txt")}


def test_a_document_hash_stores_only_what_cannot_be_derived_in_listpack_encoding(project, tree, redis_client):
    """Issue 18: 0.73 KB per document hash with the content hash twice, three forms of the path and
    values past 64 bytes (Redis then leaves its compact listpack encoding)."""
    deep = "a-rather-long-folder-name/that-goes-on/and-on-and-on/until-the-path-is-long/report.docx"
    (tree / deep).parent.mkdir(parents=True)
    (tree / deep).write_bytes(b"x" * 100)
    project.filesystem("fs", tree)
    assert sync(project).result == "ok"
    key = doc_key("kmrl", f"fs:{deep}")
    stored = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert set(stored) == {"status", "synced_at", "sha256", "size", "blob", "modified_at"}
    assert redis_client.object("encoding", key) in (b"listpack", b"ziplist")  # 7 / the embedded 6.2
    assert all(len(v.encode()) <= 64 for v in stored.values())
    doc = document(redis_client, f"fs:{deep}")
    assert doc["path"] == deep and len(doc["absolute_path"]) > 64 and doc["version"] == doc["sha256"]
