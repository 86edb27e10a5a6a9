"""kmrl-sync on a real 3-master Redis Cluster (issue 18): connectors spread over every master, each
commit one script in its connector's slot, crash consistency as on one Redis, consumer groups
reading the streams, and the commands around a sync (status, queue, health, reset, the daemon)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from kmrl_sync.hub import Hub
from tests.conftest import Project
from tests.support.crash import crash_rng, kill_at_random_commits
from tests.support.redis_topologies import Cluster
from tests.support.waiting import wait_until

QUEUE = "document_processing"


def _project(root: Path, cluster: Cluster, extra: str = "") -> Project:
    project = Project(root, cluster.url)
    project.config.write_text(
        f'redis: {{url: "{cluster.url}", cluster: true, key_prefix: kmrl}}\n'
        "state_dir: ./state\n"
        f"queue: {{format: stream, name: {QUEUE}}}\n"
        "connectors_dir: connectors\n"
        "log: {level: warning, format: json}\n" + extra)
    return project


def _one_name_per_master(cluster: Cluster) -> list[str]:
    """Connector names whose hash tags fall on each of the three masters, in node order."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(cluster.node_of(f"{{share-{i}}}").port, f"share-{i}")
        if len(found) == len(cluster.nodes):
            return [found[node.port] for node in cluster.nodes]
    raise AssertionError("no connector names on every master")


def _files(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"f{i:05}.txt").write_text(f"content {i}")
    return [f"f{i:05}.txt" for i in range(count)]


def _stream(name: str) -> str:
    return f"{QUEUE}:{{{name}}}"


def _queued(client: RedisCluster, name: str) -> Counter[tuple[str, str]]:
    return Counter((fields[b"event"].decode(), fields[b"document_id"].decode())
                   for _, fields in client.xrange(_stream(name)))


def test_connectors_on_every_master_sync_and_every_command_works_there(tmp_path, redis_cluster):
    project = _project(tmp_path / "project", redis_cluster)
    names = _one_name_per_master(redis_cluster)
    for name in names:
        files = _files(tmp_path / name, 30)
        project.filesystem(name, tmp_path / name)
    project.cli("check", "--connect", check=True)
    project.cli("sync", "--all", check=True)
    client = redis_cluster.client()
    for name, node in zip(names, redis_cluster.nodes, strict=True):
        assert _queued(client, name) == Counter(("created", f"{name}:{f}") for f in files)
        direct = node.client()  # the stream and the document hashes live on the connector's master
        assert direct.xlen(_stream(name)) == 30
        assert direct.hget(f"kmrl:doc:{{{name}}}:f00007.txt", "status") == b"created"

    (tmp_path / names[1] / "f00003.txt").unlink()
    (tmp_path / names[2] / "f00004.txt").write_text("changed")
    assert "created 0, updated 0, deleted 1" in project.cli("sync", names[1], check=True).stdout
    assert "created 0, updated 1, deleted 0" in project.cli("sync", names[2], check=True).stdout

    status = json.loads(project.cli("status", "--json", check=True).stdout)
    assert status["redis"]["ok"] and status["redis"]["masters"] == 3
    assert {c["name"]: c["known_documents"] for c in status["connectors"]} == dict(zip(names, (30, 29, 30),
                                                                                          strict=True))
    shown = project.cli("queue", "--limit", "1", check=True).stdout
    assert all(f"{_stream(name)} (stream): 3{n} entries" in shown for name, n in zip(names, (0, 1, 1), strict=True))
    project.cli("health", check=True)

    assert "reset" in project.cli("reset", names[0], check=True).stdout
    assert "created 30" in project.cli("sync", names[0], check=True).stdout  # a full sync after the reset


def test_a_consumer_group_reads_each_document_once(tmp_path, redis_cluster):
    project = _project(tmp_path / "project", redis_cluster)
    names = _one_name_per_master(redis_cluster)
    client = redis_cluster.client()
    for name in names:
        _files(tmp_path / name, 700)  # two batches each
        project.filesystem(name, tmp_path / name)
        client.xgroup_create(_stream(name), "workers", id="0", mkstream=True)
    project.cli("sync", "--all", check=True)
    read: list[str] = []
    for name in names:
        consumer = 0
        while batch := client.xreadgroup("workers", f"worker-{consumer % 2}", {_stream(name): ">"}, count=50):
            [(_, entries)] = batch
            read += [fields[b"document_id"].decode() for _, fields in entries]
            client.xack(_stream(name), "workers", *[entry_id for entry_id, _ in entries])
            consumer += 1
    assert Counter(read) == Counter(f"{name}:f{i:05}.txt" for name in names for i in range(700))
    for name in names:
        assert client.xpending(_stream(name), "workers")["pending"] == 0


@pytest.mark.slow
def test_sigkill_at_random_commits_on_a_cluster_then_finish(tmp_path, redis_cluster):
    project = _project(tmp_path / "project", redis_cluster)
    [name, *_] = _one_name_per_master(redis_cluster)
    files = _files(tmp_path / "docs", 5000)
    project.filesystem(name, tmp_path / "docs")
    client = redis_cluster.client()
    seed, rng = crash_rng()
    command = [sys.executable, "-m", "kmrl_sync", "sync", name, "-c", str(project.config)]
    kills = kill_at_random_commits(command, project.root, lambda: client.xlen(_stream(name)), seed=seed, rng=rng,
                                   runs=5, startup_share=0.2)
    final = project.cli("sync", name, timeout=300)
    assert final.returncode == 0, (seed, final.stdout, final.stderr)
    assert kills.count >= 3, f"seed {seed}: the sync finished before most kills; the test proved little"
    assert _queued(client, name) == Counter(("created", f"{name}:{f}") for f in files), f"seed {seed}"


def test_the_daemon_beats_and_leases_on_a_cluster(tmp_path, redis_cluster):
    project = _project(tmp_path / "project", redis_cluster,
                       extra="daemon: {lease_ttl: 5s, heartbeat_ttl: 3s, startup_jitter: 0, expected: true}\n")
    names = _one_name_per_master(redis_cluster)
    for name in names:
        _files(tmp_path / name, 5)
        project.connector(name, f"type: filesystem\nschedule: {{every: 1s}}\noptions: {{root: {tmp_path / name}}}\n")
    daemon = subprocess.Popen([sys.executable, "-m", "kmrl_sync", "run", "-c", str(project.config)], cwd=project.root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = redis_cluster.client()
    try:
        wait_until(lambda: all(client.xlen(_stream(name)) == 5 for name in names), 60, "every connector synced")
        wait_until(lambda: project.cli("health").returncode == 0, 30, "a healthy daemon on the Cluster")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert client.hlen("kmrl:daemons") == 0  # unregistered on the way out
    assert not any(client.exists(f"kmrl:{{{name}}}:lease") for name in names)  # every lease released


def test_blobs_gc_reads_the_document_hashes_of_every_master(tmp_path, redis_cluster):
    """gc keeps what any live document refers to: it must SCAN every master, not the one it asked."""
    project = _project(tmp_path / "project", redis_cluster)
    names = _one_name_per_master(redis_cluster)
    for name in names:
        (tmp_path / name).mkdir()
        for file in ("keep.bin", "gone.bin"):
            (tmp_path / name / file).write_bytes(os.urandom(2000))
        project.filesystem(name, tmp_path / name, "snapshot: true\n")
    project.cli("sync", "--all", check=True)
    for name in names:
        (tmp_path / name / "gone.bin").unlink()
    project.cli("sync", "--all", check=True)
    report = json.loads(project.cli("blobs", "gc", "--grace", "0s", "--json", check=True).stdout)
    assert (report["objects"], report["referenced"], report["deleted"]) == (6, 3, 3)
    store = project.root / "state" / "blobs"
    kept = {p.read_bytes() for p in store.rglob("*") if p.is_file() and not p.name.startswith(".")}
    assert kept == {(tmp_path / name / "keep.bin").read_bytes() for name in names}
    with Hub.from_config(project.config) as hub:  # the worker-side API on the Cluster, every master
        for name in names:
            assert hub.document(f"{name}:gone.bin")["status"] == "deleted"
            with hub.open(f"{name}:keep.bin") as f:
                assert f.read() == (tmp_path / name / "keep.bin").read_bytes()
