"""An upgrade from the layout before issue 18 (untagged document hashes holding the full metadata,
versions / index / fingerprints per connector): the first run migrates it, sends nothing again,
loses no field, leaves no old key, and a run killed half-way through is finished by the next one."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmrl_sync.engine import migration
from kmrl_sync.engine.docview import ROOT
from kmrl_sync.engine.keys import ConnectorKeys, doc_key, document_id_of
from tests.support.celery_messages import decode_queue
from tests.support.documents import document


def _docs(client) -> dict[str, dict[str, str]]:
    return {document_id_of("kmrl", k.decode()): document(client, document_id_of("kmrl", k.decode()))
            for k in client.scan_iter(match="kmrl:doc:{fs}:*")}


def _as_legacy(client, connector: str = "fs") -> None:
    """Rewrite the current state as the release before issue 18 kept it (same content)."""
    keys = ConnectorKeys("kmrl", connector)
    versions, index, fingerprints = keys.legacy_state
    docs = _docs(client)
    known = dict(m.split(b"\0", 1) for m in client.zrange(keys.known, 0, -1))
    for document_id, full in docs.items():
        native = document_id.partition(":")[2]
        client.delete(doc_key("kmrl", document_id))
        client.hset(f"kmrl:doc:{document_id}", mapping=full)  # every field, document_id and connector too
        if native.encode() in known:
            client.hset(versions, native, full["version"])
            client.zadd(index, {native: 0})
            client.hset(fingerprints, native, known[native.encode()])
    client.delete(keys.known, keys.docdefaults)


@pytest.fixture
def upgraded(project, tmp_path: Path, redis_client):
    """A tree synced, one file deleted since, all of it in the old layout."""
    tree = tmp_path / "tree"
    for i in range(1200):  # more than one migration chunk
        (tree / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 7}" / f"f{i}.txt").write_text(f"content {i}")
    project.filesystem("fs", tree)
    engine = project.engine()
    assert engine.run("fs", wait=0).created == 1200
    (tree / "d0" / "f0.txt").unlink()
    assert engine.run("fs", wait=0).deleted == 1
    redis_client.delete("document_processing")
    before = _docs(redis_client)
    _as_legacy(redis_client)
    assert not list(redis_client.scan_iter(match="kmrl:doc:{fs}:*"))
    return tree, before


def _assert_migrated(redis_client, before) -> None:
    assert _docs(redis_client) == before  # every document, the deleted one too, reads as it did
    assert not list(redis_client.scan_iter(match="kmrl:doc:fs:*"))
    assert not any(redis_client.exists(k) for k in ConnectorKeys("kmrl", "fs").legacy_state)
    stored = redis_client.hgetall(doc_key("kmrl", "fs:d1/f1.txt"))
    assert b"absolute_path" not in stored and b"department" not in stored and b"version" not in stored


def test_the_first_run_after_the_upgrade_migrates_and_sends_nothing_again(project, redis_client, upgraded):
    tree, before = upgraded
    (tree / "d2" / "f2.txt").write_text("changed")

    summary = project.engine().run("fs", wait=0)

    assert (summary.created, summary.updated, summary.deleted) == (0, 1, 0), summary
    assert [(t.task, t.document_id) for t in decode_queue(redis_client)] == [("process_document", "fs:d2/f2.txt")]
    before["fs:d2/f2.txt"] = document(redis_client, "fs:d2/f2.txt")
    _assert_migrated(redis_client, before)
    assert project.engine().run("fs", wait=0).unchanged == 1199


def test_a_migration_killed_half_way_is_finished_by_the_next_run(project, redis_client, upgraded):
    _tree, before = upgraded
    state = project.engine().state("fs")
    compactor = state.use_defaults({"department": "engineering", "source": "filesystem", "priority": "normal",
                                    ROOT: str(_tree.resolve())})
    old = sorted(redis_client.scan_iter(match="kmrl:doc:fs:*"))
    migration._move(state, compactor, old[:500], state.keys.legacy_state[0])  # one chunk moved, then killed
    assert len(list(redis_client.scan_iter(match="kmrl:doc:fs:*"))) == len(old) - 500

    summary = project.engine().run("fs", wait=0)

    assert (summary.created, summary.updated, summary.deleted, summary.unchanged) == (0, 0, 0, 1199), summary
    assert not decode_queue(redis_client)
    _assert_migrated(redis_client, before)
