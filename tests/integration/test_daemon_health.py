"""`kmrl-sync health` exit codes against the real Redis and real daemons, and `status --json`."""

from __future__ import annotations

import json
import signal
import socket

from tests.integration.test_daemon_support import DaemonProcess, filesystem_connector
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until


def health(project) -> tuple[int, str]:
    result = project.cli("health", timeout=60)
    return result.returncode, result.stdout + result.stderr


def test_health_healthy_stale_heartbeat_and_eviction_policy(project, redis_client, tmp_path):
    project.write_main(extra="daemon: {startup_jitter: 0, heartbeat_ttl: 2s, expected: true}\n")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("a")
    filesystem_connector(project, "docs", root)
    heartbeat = f"kmrl:heartbeat:{socket.gethostname()}:"

    code, out = health(project)
    assert code == 1 and "no daemon heartbeat" in out  # daemon.expected: true and none is running

    daemon = DaemonProcess(project)
    try:
        wait_until(lambda: redis_client.hget("kmrl:{docs}:stats", "last_run_result") == b"ok", 30, "a first run")
        assert health(project) == (0, "healthy\n")

        status = json.loads(project.cli("status", "--json", check=True).stdout)
        [entry] = status["connectors"]
        assert entry["last_run"]["result"] == "ok" and entry["next_run"] and entry["lag_seconds"] is not None
        [alive] = status["daemons"]
        assert alive["alive"] and alive["pid"] == daemon.pid and alive["connectors"] == ["docs"]
        assert status["redis"]["version"] and status["redis"]["connected_clients"]

        redis_client.config_set("maxmemory-policy", "allkeys-lru")
        try:
            code, out = health(project)
            assert code == 1 and "maxmemory-policy is allkeys-lru" in out
        finally:
            redis_client.config_set("maxmemory-policy", "noeviction")

        daemon.process.kill()  # no clean exit: it stays registered, its heartbeat expires
        daemon.wait(10)
        wait_until(lambda: not any(redis_client.scan_iter(f"{heartbeat}{daemon.pid}:*")), 10, "the heartbeat to expire")
        code, out = health(project)
        assert code == 1 and "stale heartbeat" in out and str(daemon.pid) in out

        # systemd restarts it: the new daemon on this host forgets the dead one, health recovers.
        daemon = DaemonProcess(project)
        wait_until(lambda: any(redis_client.scan_iter(f"{heartbeat}{daemon.pid}:*")), 30, "the new heartbeat")
        wait_until(lambda: redis_client.hlen("kmrl:daemons") == 1, 10, "the dead daemon to be forgotten")
        assert health(project) == (0, "healthy\n")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]
    # A clean stop is not an alarm for the default (daemon.expected: false) config.
    project.write_main(extra="daemon: {heartbeat_ttl: 2s}\n")
    assert health(project) == (0, "healthy\n")


def test_health_failing_connector_and_unreachable_redis(project, redis_client, tmp_path):
    project.write_main(extra="daemon: {alert_after: 1ms}\n")
    filesystem_connector(project, "gone", tmp_path / "does-not-exist")
    assert project.cli("sync", "gone").returncode == 1
    code, out = health(project)
    assert code == 1 and "gone has been failing since" in out

    project.redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    project.write_main()
    code, out = health(project)
    assert code == 1 and "unreachable" in out


ACL_RULES = ["on", ">s3cret", "resetkeys", "~kmrl:*", "~document_processing*", "~_kombu.binding*",
             "resetchannels", "&kmrl:events", "-@all", "+@read", "+@write", "+@transaction", "+@connection",
             "-@admin", "-@dangerous", "+evalsha", "+script|load", "+publish", "+info"]


def test_the_documented_acl_is_enough_for_daemon_sync_status_and_health(project, redis_server, redis_client,
                                                                         tmp_path):
    """The README's ACL line: everything works and Redis logs no denied command, key or channel."""
    redis_client.execute_command("ACL", "SETUSER", "kmrl-sync", *ACL_RULES)
    redis_client.execute_command("ACL", "LOG", "RESET")
    try:
        project.redis_url = f"redis://kmrl-sync:s3cret@127.0.0.1:{redis_server.port}/0"
        project.write_main(extra="daemon: {startup_jitter: 0, heartbeat_ttl: 2s}\n")
        root = tmp_path / "docs"
        root.mkdir()
        (root / "a.txt").write_text("a")
        project.connector("docs", f"type: filesystem\nschedule: {{every: 1s}}\noptions:\n  root: {root}\n"
                                  "  watch: true\n")
        assert project.cli("sync", "docs").returncode == 0
        daemon = DaemonProcess(project)
        try:
            (root / "b.txt").write_text("b")
            wait_until(lambda: redis_client.exists("kmrl:doc:{docs}:b.txt"), 30, "the daemon to sync b.txt")
            assert health(project) == (0, "healthy\n")
            assert project.cli("status", "--json").returncode == 0
            assert project.cli("reset", "docs").returncode in (0, 1)  # 1 = lease held by the daemon right now
        finally:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0, daemon.output()[-3000:]
        assert redis_client.execute_command("ACL", "LOG") == []
        assert "refused" not in daemon.output() and "NoPermission" not in daemon.output()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "kmrl-sync")


def test_the_daemon_warns_at_start_when_redis_may_evict_its_state(project, redis_client):
    redis_client.config_set("maxmemory-policy", "allkeys-lfu")
    try:
        daemon = DaemonProcess(project)
        try:
            wait_until(lambda: "maxmemory-policy" in daemon.output(), 30, "the eviction warning")
            assert "allkeys-lfu" in daemon.output()
        finally:
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
