"""A real Celery worker consumes exactly what a sync queued (issue: user story 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
from celery import Celery

from tests.support.celery_messages import decode_queue
from tests.support.celery_worker import Worker, solo_worker


@pytest.fixture
def worker(redis_server, tmp_path):
    log = tmp_path / "tasks.jsonl"
    env = {**os.environ, "KMRL_TEST_BROKER": redis_server.url, "KMRL_TEST_TASK_LOG": str(log)}
    with solo_worker(env, "document_processing", stderr=subprocess.PIPE):
        probe = Worker(log, redis_server.url)
        yield probe
        probe.close()


def test_worker_runs_one_task_per_file_then_exactly_the_changes(project, tmp_path, worker):
    docs = tmp_path / "share"
    docs.mkdir()
    for i in range(20):
        (docs / f"file {i}.txt").write_text(f"content {i}")
    project.filesystem("shared-drive", docs)
    project.cli("sync", "shared-drive", check=True)
    ran = worker.drain()
    assert Counter(ran) == Counter(("process_document", f"shared-drive:file {i}.txt") for i in range(20))

    (docs / "file 3.txt").write_text("edited")
    (docs / "file 4.txt").unlink()
    (docs / "new.txt").write_text("added")
    project.cli("sync", "shared-drive", check=True)
    ran = worker.drain()[20:]
    assert Counter(ran) == Counter([("process_document", "shared-drive:file 3.txt"),
                                    ("process_document", "shared-drive:new.txt"),
                                    ("delete_document", "shared-drive:file 4.txt")])


def test_the_worker_opens_stored_content_from_its_own_working_directory(project, tmp_path, worker):
    """`blob` is an absolute file:// URI, even when the sync ran with a relative config and
    state_dir (the finding: `state/blobs/sha256/...`, relative to wherever `sync` ran)."""
    docs = tmp_path / "share"
    docs.mkdir()
    for i in range(5):
        (docs / f"file {i}%[x].txt").write_text(f"content {i}")
    project.filesystem("snap", docs, "snapshot: true\n")
    result = subprocess.run([sys.executable, "-m", "kmrl_sync", "sync", "snap", "-c", "sync.yaml"],
                            cwd=project.root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(worker.drain()) == 5
    contents = [d["content"] for d in map(json.loads, worker.log.read_text().splitlines()) if "content" in d]
    assert contents == ["ok"] * 5  # the worker runs in the repository, not in the project folder


def test_message_matches_what_celery_itself_sends(project, tmp_path, redis_client, redis_server):
    docs = tmp_path / "share"
    docs.mkdir()
    (docs / "a.txt").write_text("x")
    project.filesystem("c", docs)
    project.cli("sync", "c", check=True)
    [ours] = decode_queue(redis_client)
    redis_client.delete("document_processing")
    app = Celery("probe", broker=redis_server.url)
    app.send_task("process_document", args=["c:a.txt"], queue="document_processing")
    [theirs] = decode_queue(redis_client)

    def shape(message: dict) -> dict:
        m = json.loads(json.dumps(message))
        for section, field in (("headers", "id"), ("headers", "root_id"), ("headers", "origin"),
                               ("properties", "correlation_id"), ("properties", "reply_to"),
                               ("properties", "delivery_tag")):
            assert isinstance(m[section].pop(field), str)
        return m

    assert shape(ours.raw) == shape(theirs.raw)
    assert ours.raw["headers"]["id"] == ours.raw["headers"]["root_id"] == ours.raw["properties"]["correlation_id"]
    assert redis_client.smembers("_kombu.binding.document_processing") == {
        b"document_processing\x06\x16\x06\x16document_processing"}
