"""`kmrl-sync blobs gc` on what real syncs stored, against a real Redis: what it deletes, what it keeps,
what it reports, and that it never deletes content a sync in flight refers to."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from kmrl_sync.content import open_store
from kmrl_sync.engine.keys import doc_key, doc_keys_pattern, document_id_of
from kmrl_sync.engine.lease import Lease
from kmrl_sync.engine.retention import CLOCK_MARGIN, collect_garbage
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import ConnectorState
from kmrl_sync.hub import Hub
from kmrl_sync.loading.loader import load_config
from tests.integration.test_daemon_support import DaemonProcess, EventLog
from tests.support.documents import document
from tests.support.waiting import wait_until


def _objects(store_root: Path) -> dict[str, int]:
    """digest -> size of every object in the folder store."""
    return {p.name: p.stat().st_size for p in (store_root / "sha256").glob("*/*") if not p.name.startswith(".")}


def _files(store_root: Path) -> list[str]:
    return sorted(str(p.relative_to(store_root)) for p in store_root.rglob("*") if p.is_file())


def _live_digests(redis_client) -> set[str]:
    live = set()
    for key in redis_client.scan_iter(match=doc_keys_pattern("kmrl")):
        meta = document(redis_client, document_id_of("kmrl", key.decode()))
        if meta["blob"] and meta["status"] != "deleted":
            live.add(meta["blob"].rpartition("/")[2])
    return live


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def churned(project, tmp_path):
    """A snapshot connector after two syncs: one file deleted, one changed; returns (source, store root,
    the unreferenced digests with their sizes)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, size in (("keep.bin", 3000), ("gone.bin", 5000), ("changed.bin", 7000)):
        (docs / name).write_bytes(os.urandom(size))
    project.filesystem("snap", docs, "snapshot: true\n")
    project.cli("sync", "snap", check=True)
    store = project.root / "state" / "blobs"
    before = _objects(store)
    (docs / "gone.bin").unlink()
    (docs / "changed.bin").write_bytes(os.urandom(11000))
    project.cli("sync", "snap", check=True)
    unreferenced = {d: s for d, s in before.items() if s in (5000, 7000)}
    assert len(unreferenced) == 2
    return docs, store, unreferenced


def _gc(project, *args: str) -> dict:
    result = project.cli("blobs", "gc", "--json", *args, check=True)
    return json.loads(result.stdout)


def test_dry_run_counts_and_changes_nothing(project, churned, redis_client):
    _, store, unreferenced = churned
    (store / "tmp").mkdir(exist_ok=True)
    (store / "tmp" / "killed-run").write_bytes(b"x" * 100)
    (store / "sha256" / "ab" / ".tmp-123-killed").write_bytes(b"y" * 50)
    files, keys = _files(store), sorted(redis_client.keys("*"))
    report = _gc(project, "--grace", "0s", "--dry-run")
    assert report["dry_run"] is True
    assert (report["deleted"], report["deleted_bytes"]) == (2, sum(unreferenced.values()))
    assert (report["leftovers_deleted"], report["leftover_bytes"]) == (2, 150)
    assert report["freed_bytes"] == sum(unreferenced.values()) + 150
    assert report["objects"] == 4 and report["referenced"] == 2
    assert _files(store) == files and sorted(redis_client.keys("*")) == keys


def test_grace_keeps_recent_content_and_zero_leaves_nothing_unreferenced(project, churned, redis_client):
    docs, store, unreferenced = churned
    (store / "tmp").mkdir(exist_ok=True)
    (store / "tmp" / "killed-run").write_bytes(b"x" * 100)
    old, recent = sorted(unreferenced)
    _age(store / "sha256" / old[:2] / old, 2 * 3600)
    _age(store / "tmp" / "killed-run", 2 * 3600)

    report = _gc(project, "--grace", "1h")
    assert (report["deleted"], report["deleted_bytes"], report["kept_recent"]) == (1, unreferenced[old], 1)
    assert (report["leftovers_deleted"], report["leftover_bytes"]) == (1, 100)
    assert set(_objects(store)) == _live_digests(redis_client) | {recent}
    assert not (store / "tmp" / "killed-run").exists()

    report = _gc(project, "--grace", "0s")
    assert (report["deleted"], report["deleted_bytes"], report["kept_recent"]) == (1, unreferenced[recent], 0)
    assert set(_objects(store)) == _live_digests(redis_client)
    with Hub(project.redis_url, "kmrl", store) as hub:
        for name in ("keep.bin", "changed.bin"):
            with hub.open(f"snap:{name}") as f:
                assert f.read() == (docs / name).read_bytes()
    assert _gc(project, "--grace", "0s")["deleted"] == 0


def test_a_document_hash_without_its_blob_field_still_keeps_its_content(project, churned, redis_client):
    """A compact document hash may leave `blob` out (derived from `sha256` when read): its content
    is still referenced."""
    key = doc_key("kmrl", "snap:keep.bin")
    digest = redis_client.hget(key, "sha256").decode()
    redis_client.hdel(key, "blob")
    _gc(project, "--grace", "0s")
    assert digest in _objects(churned[1])


def test_the_grace_comes_from_the_config(project, churned):
    _, _, unreferenced = churned
    project.write_main("blobs: {gc: {grace: 0s}}\n")
    assert _gc(project)["deleted"] == len(unreferenced)


def test_a_held_lease_spares_what_was_written_since_it_began(project, churned, redis_client):
    """A sync in flight (its lease held) may commit references to anything written since it began:
    gc --grace 0s keeps all of it, and deletes it once the lease is gone."""
    _, store, unreferenced = churned
    state = ConnectorState(redis_client, Scripts.register(redis_client), "kmrl", "other")
    lease = Lease(redis_client, state.scripts, state.keys, ttl=60, run_id="inflight")
    lease.acquire()
    try:
        report = _gc(project, "--grace", "0s")
        assert (report["deleted"], report["kept_recent"]) == (0, len(unreferenced))
        # Written before the lease's start (minus the clock margin): not protected by it.
        oldest = min(unreferenced)
        _age(store / "sha256" / oldest[:2] / oldest, CLOCK_MARGIN + 60)
        assert _gc(project, "--grace", "0s")["deleted"] == 1
    finally:
        lease.release()
    assert _gc(project, "--grace", "0s")["deleted"] == len(unreferenced) - 1


def test_a_second_gc_waits_its_turn(project, churned, redis_client):
    with redis_client.lock("kmrl:blobs-gc", timeout=60):
        result = project.cli("blobs", "gc", "--grace", "0s")
    assert result.returncode == 1 and "another `kmrl-sync blobs gc` is running" in result.stderr


def _store_objects(store) -> dict[str, int]:
    return {o.digest: o.size for o in store.list_objects()}


def _all_older_than(store, seconds: float) -> bool:
    """Every object of the store reads as last written more than `seconds` ago (S3 keeps whole
    seconds: gc --grace 0s spares what it cannot tell from a write that may still be in flight)."""
    return all(o.modified + 1 < time.time() - seconds for o in store.list_objects())


@pytest.fixture(params=["folder", "s3"])
def store_kind(request, project, tmp_path):
    """The project's content store: its folder, or a bucket on moto's S3 server."""
    if request.param == "s3":
        server, bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
        project.write_main(server.blobs_yaml(bucket, tmp_path / "s3-secrets"))
    return request.param


def test_gc_racing_syncs_never_deletes_referenced_content(project, tmp_path, redis_client, store_kind):
    """Syncs that keep bringing back earlier content (the object gc is deleting is the one a batch in
    flight refers to again), with gc --grace 0s running in a loop beside them: after every sync, every
    live document's content is there; when the syncs stop, one more gc leaves exactly the live set."""
    docs = tmp_path / "docs"
    docs.mkdir()
    versions = [os.urandom(2000 + i) for i in range(4)]
    for i in range(12):
        (docs / f"f{i}.bin").write_bytes(versions[i % 4])
    project.filesystem("race", docs, "snapshot: true\n")
    config = load_config(project.config)
    store = open_store(config.blobs)
    stop = threading.Event()
    gc_runs, errors = [0], []

    def gc_loop() -> None:
        try:
            while not stop.is_set():
                collect_garbage(redis_client, store, "kmrl", grace=0.0)
                gc_runs[0] += 1
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    collector = threading.Thread(target=gc_loop)
    collector.start()
    try:
        with Hub(project.redis_url, "kmrl", config.blobs) as hub:
            for round_ in range(1, 16):
                for i in range(12):  # each file moves to the next version: content comes back every 4 rounds
                    (docs / f"f{i}.bin").write_bytes(versions[(i + round_) % 4])
                project.cli("sync", "race", check=True)
                for i in range(12):
                    with hub.open(f"race:f{i}.bin") as f:
                        assert f.read() == versions[(i + round_) % 4], f"round {round_}, f{i}.bin"
    finally:
        stop.set()
        collector.join(60)
    assert not errors, errors
    assert gc_runs[0] >= 15
    wait_until(lambda: _all_older_than(store, 1.5), 10, "the last objects to age past S3's whole second")
    collect_garbage(redis_client, store, "kmrl", grace=0.0)
    assert set(_store_objects(store)) == _live_digests(redis_client)
    store.close()


def test_s3_gc_counts_deletes_exactly_the_unreferenced_and_leftovers(project, tmp_path, redis_client, s3_server,
                                                                     s3_bucket):
    project.write_main(s3_server.blobs_yaml(s3_bucket, tmp_path / "s3-secrets"))
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, size in (("keep.bin", 3000), ("gone.bin", 5000), ("changed.bin", 7000)):
        (docs / name).write_bytes(os.urandom(size))
    project.filesystem("snap", docs, "snapshot: true\n")
    project.cli("sync", "snap", check=True)
    (docs / "gone.bin").unlink()
    (docs / "changed.bin").write_bytes(os.urandom(11000))
    project.cli("sync", "snap", check=True)
    client = s3_server.client()
    client.create_multipart_upload(Bucket=s3_bucket, Key="kmrl/sha256/ab/" + "ab" * 32)  # a killed upload
    store = open_store(load_config(project.config).blobs)
    wait_until(lambda: _all_older_than(store, 1.5), 10, "the objects to age past S3's whole second")

    before = s3_server.keys(s3_bucket)
    report = _gc(project, "--grace", "0s", "--dry-run")
    assert (report["deleted"], report["deleted_bytes"], report["leftovers_deleted"]) == (2, 12000, 1)
    assert s3_server.keys(s3_bucket) == before

    report = _gc(project, "--grace", "0s")
    assert (report["deleted"], report["deleted_bytes"], report["leftovers_deleted"]) == (2, 12000, 1)
    assert set(_store_objects(store)) == _live_digests(redis_client) and len(_live_digests(redis_client)) == 2
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads") is None
    store.close()


def test_the_daemon_runs_gc_on_its_schedule_and_skips_a_busy_turn(project, churned, redis_client):
    """`blobs.gc: {every: ...}`: the daemon runs gc itself (its own thread, beside the syncs), logs and
    publishes the report; a turn that finds another gc running is skipped, and the next one runs."""
    _, store, unreferenced = churned
    project.write_main("daemon: {startup_jitter: 0}\nblobs: {gc: {every: 1s, grace: 0s}}\n")
    events = EventLog(redis_client)
    lock = redis_client.lock("kmrl:blobs-gc", timeout=60)
    lock.acquire()
    daemon = DaemonProcess(project)
    try:
        assert "another" in events.wait(30, event="blobs_gc_skipped")["reason"]
        assert set(unreferenced) <= set(_objects(store))
        lock.release()
        report = events.wait(60, event="blobs_gc_finished")
        assert (report["deleted"], report["deleted_bytes"]) == (2, sum(unreferenced.values()))
        assert set(_objects(store)) == _live_digests(redis_client)
        assert daemon.stop() == 0
    finally:
        events.close()
        if daemon.alive():
            daemon.process.kill()
            daemon.wait()


def test_a_stop_ends_gc_half_way_and_says_so(project, redis_client, tmp_path):
    """The daemon's stop flag: asked every 1,000 items, a stopped gc deletes nothing more and says so;
    it let go of its lock, so the next gc runs and deletes everything."""
    from kmrl_sync.content.folder import FolderStore

    store = FolderStore(tmp_path / "blobs")
    for i in range(1500):
        store.put_bytes(f"unreferenced {i}".encode())
    for digest in _objects(tmp_path / "blobs"):  # written a while ago: none is within the store's time slack
        _age(store.path(digest), 3600)
    report = collect_garbage(redis_client, store, "kmrl", grace=0.0, should_stop=lambda: True)
    assert report.stopped and report.deleted == 0 and len(_objects(tmp_path / "blobs")) == 1500
    report = collect_garbage(redis_client, store, "kmrl", grace=0.0)
    assert not report.stopped and report.deleted == 1500 and not _objects(tmp_path / "blobs")


@pytest.mark.parametrize("grace", ["0s", "24h"])
def test_an_object_a_killed_gc_set_aside_is_put_back(project, churned, redis_client, grace):
    """The folder store deletes by renaming aside first: a gc killed right after that rename leaves the
    object under a `.tmp-gc-` name. The next gc puts it back before judging it, so a referenced one
    is readable again (and an unreferenced one is then deleted as usual)."""
    from kmrl_sync.content.folder import GC_ASIDE

    docs, store, unreferenced = churned
    live = redis_client.hget(doc_key("kmrl", "snap:keep.bin"), "sha256").decode()
    dead = min(unreferenced)
    for digest in (live, dead):
        path = store / "sha256" / digest[:2] / digest
        path.rename(path.with_name(f"{GC_ASIDE}{digest}-123-killed"))
    report = _gc(project, "--grace", grace)
    assert report["restored"] == 2 and report["leftovers_deleted"] == 0
    assert report["deleted"] == (len(unreferenced) if grace == "0s" else 0)
    assert live in _objects(store) and (dead in _objects(store)) == (grace != "0s")
    assert not list(store.rglob(f"{GC_ASIDE}*"))
    with Hub(project.redis_url, "kmrl", store) as hub, hub.open("snap:keep.bin") as f:
        assert f.read() == (docs / "keep.bin").read_bytes()


def test_an_unreachable_store_is_one_line_and_exit_1(project, tmp_path):
    from tests.support.redis_server import free_port
    from tests.support.s3_server import S3Server

    down = S3Server(port=free_port())  # never started: the port refuses connections
    project.write_main(down.blobs_yaml("kmrl-gone", tmp_path / "s3-secrets"))
    result = project.cli("blobs", "gc", "--grace", "0s")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the content store s3://kmrl-gone/kmrl" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
