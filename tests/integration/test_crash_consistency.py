"""A crash at any instant loses nothing and duplicates nothing (SIGKILL, Redis restarts)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.support.celery_messages import decode_queue
from tests.support.crash import crash_rng, kill_at_random_commits
from tests.support.waiting import wait_until

N_FILES = 20_000


def make_tree(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"dept{i % 10}" / f"folder{(i // 10) % max(1, n // 100)}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"doc{i}.txt").write_bytes(b"%d\n" % i * (1 + i % 50))


def sync_command(project) -> list[str]:
    return [sys.executable, "-m", "kmrl_sync", "sync", "fs", "-c", str(project.config)]


def start_sync(project) -> subprocess.Popen:
    return subprocess.Popen(sync_command(project), cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_each_queued_once(redis_client, expected: int) -> None:
    counts = Counter(t.document_id for t in decode_queue(redis_client) if t.task == "process_document")
    duplicates = {d: c for d, c in counts.items() if c > 1}
    assert not duplicates, f"{len(duplicates)} documents queued twice, e.g. {list(duplicates)[:5]}"
    assert len(counts) == expected


@pytest.mark.slow
def test_sigkill_at_random_instants_then_finish(project, tmp_path, redis_client):
    tree = tmp_path / "tree"
    make_tree(tree, N_FILES)
    project.filesystem("fs", tree)
    seed, rng = crash_rng()
    # A third of the runs die during start-up, the walk or the first commit; the others a random
    # instant shortly after their first commit, so that every kill lands inside a run however fast
    # the machine is (<= ~50 ms of progress per run: ten runs cannot finish the 20,000 files).
    kills = kill_at_random_commits(sync_command(project), project.root,
                                   lambda: redis_client.llen("document_processing"),
                                   seed=seed, rng=rng, runs=10, startup_share=0.3)
    final = project.cli("sync", "fs", timeout=600)
    assert final.returncode == 0, (seed, final.stdout, final.stderr)
    assert kills.count >= 8, f"seed {seed}: the sync finished before most kills; the test proved little"
    assert_each_queued_once(redis_client, N_FILES)
    again = project.cli("sync", "fs")
    assert "created 0, updated 0, deleted 0" in again.stdout
    assert_each_queued_once(redis_client, N_FILES)


@pytest.mark.slow
def test_redis_restart_mid_sync_loses_and_duplicates_nothing(project, tmp_path, redis_client, redis_server):
    tree = tmp_path / "tree"
    make_tree(tree, 8000)
    project.filesystem("fs", tree)
    proc = start_sync(project)
    _wait_for_first_commit(proc, redis_client)  # mid-sync: started, and committing
    redis_server.restart(down_for=1.0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out, err)
    client = redis_server.client()
    assert_each_queued_once(client, 8000)
    assert b"created 0" not in out or b"unchanged" in out


def _wait_for_first_commit(proc: subprocess.Popen, redis_client) -> None:
    """Until the run has committed a batch: its signal handlers are installed by then, however
    slowly it started (a fixed sleep sent the signal during start-up on a slow machine)."""
    wait_until(lambda: proc.poll() is not None or redis_client.llen("document_processing"), 60,
               "the run's first commit", interval=0.005)
    assert proc.poll() is None, "the sync ended before its first commit was seen"


def test_first_sigterm_finishes_the_batch_and_stops(project, tmp_path, redis_client):
    tree = tmp_path / "tree"
    make_tree(tree, 6000)
    project.filesystem("fs", tree)
    proc = start_sync(project)
    _wait_for_first_commit(proc, redis_client)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), err
    queued = len(decode_queue(redis_client))
    assert b"interrupted" in out or queued == 6000, out
    final = project.cli("sync", "fs", check=None)
    assert final.returncode == 0
    assert_each_queued_once(redis_client, 6000)


# `kmrl-sync` as `python -m kmrl_sync` runs it, which also touches $KMRL_TEST_STOP_MARK once a stop
# signal has been handled: the one thing a run held back by Redis cannot show from outside.
ANNOUNCE_STOP = """
import os, runpy
from pathlib import Path
from kmrl_sync.daemon.signals import StopFlag

stop = StopFlag.set

def announce(self):
    stop(self)
    Path(os.environ["KMRL_TEST_STOP_MARK"]).touch()

StopFlag.set = announce
runpy.run_module("kmrl_sync", run_name="__main__", alter_sys=True)
"""


def _held_back(redis_client) -> bool:
    """Whether a kmrl-sync connection (the run's) is blocked, i.e. held by CLIENT PAUSE."""
    return any("b" in c["flags"] and c["name"].startswith("kmrl-sync") for c in redis_client.client_list())


def test_second_sigterm_forces_an_immediate_exit(project, tmp_path, redis_client):
    """The second signal does not wait for the batch in flight: here a commit that Redis holds back
    (CLIENT PAUSE) for far longer than the test waits. Nothing of that batch is lost or doubled."""
    from kmrl_sync.daemon.signals import FORCED_EXIT

    tree = tmp_path / "tree"
    make_tree(tree, 6000)
    project.filesystem("fs", tree)
    handled = tmp_path / "stop-requested"
    proc = subprocess.Popen([sys.executable, "-c", ANNOUNCE_STOP, *sync_command(project)[3:]], cwd=project.root,
                            env={**os.environ, "KMRL_TEST_STOP_MARK": str(handled)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_first_commit(proc, redis_client)
    redis_client.execute_command("CLIENT", "PAUSE", "30000", "WRITE")
    try:
        wait_until(lambda: _held_back(redis_client), 30, "the run's next write to be held back by the pause")
        proc.send_signal(signal.SIGTERM)
        # Handled (a second signal before that would be merged with the first by Python), and the
        # run still waits for its commit, which Redis holds back.
        wait_until(lambda: handled.exists() or proc.poll() is not None, 30, "the first SIGTERM to be handled")
        assert proc.poll() is None and _held_back(redis_client), "the first signal alone ended the run"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
        assert proc.returncode == FORCED_EXIT
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    final = project.cli("sync", "fs", check=None)
    assert final.returncode == 0, final.stdout + final.stderr
    assert_each_queued_once(redis_client, 6000)
