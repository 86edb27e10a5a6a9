"""Daemon parts without a daemon: heartbeat, health rules, metrics, sd_notify, watch filtering,
run coalescing and reload diffs (Redis is the session's redis-server, or unreachable on purpose)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry
from watchdog.events import (
    DirModifiedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileOpenedEvent,
)

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.config.models import parse_listen
from kmrl_sync.connectors.filesystem.watch import _Handler, watch_tree
from kmrl_sync.daemon import status
from kmrl_sync.daemon.heartbeat import Heartbeat
from kmrl_sync.daemon.metrics import Metrics
from kmrl_sync.daemon.systemd_notify import Notifier
from kmrl_sync.engine.identity import ProcessIdentity
from kmrl_sync.engine.keys import daemons_key
from kmrl_sync.engine.runner import RunSummary
from kmrl_sync.loading.loader import load_config
from tests.support.waiting import wait_until

LOG = structlog.get_logger("test")


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_has_a_ttl_registers_the_daemon_and_unregisters_on_clean_stop(redis_client):
    client = redis_client
    me = ProcessIdentity.current()
    client.hset(daemons_key("kmrl"), f"{socket.gethostname()}:999999999",
                json.dumps({**me.fields(), "pid": 999999999}))  # a dead daemon of this host and namespace
    client.hset(daemons_key("kmrl"), "elsewhere:1", json.dumps({"host": "elsewhere", "pid": 1}))
    # Same host name, pid not visible here, but another container (PID namespace) or an entry of an
    # older kmrl-sync that did not say which: not provably dead, so kept.
    other_container = f"{socket.gethostname()}:999999998"
    client.hset(daemons_key("kmrl"), other_container, json.dumps({**me.fields(), "pid": 999999998, "pidns": "1"}))
    old_format = f"{socket.gethostname()}:999999997"
    client.hset(daemons_key("kmrl"), old_format, json.dumps({"host": socket.gethostname(), "pid": 999999997}))
    ups = []
    beat = Heartbeat(client, "kmrl", 6, lambda: {"connectors": ["a", "b"], "version": "1"}, LOG,
                     on_up=lambda: ups.append(1))
    assert beat.beat() and beat.beat()
    assert ups == [1]  # once per transition to "reachable"
    fields = {k.decode(): v.decode() for k, v in client.hgetall(beat.key).items()}
    assert fields["pid"] == str(os.getpid()) and json.loads(fields["connectors"]) == ["a", "b"]
    assert 0 < client.pttl(beat.key) <= 6000
    registered = {k.decode() for k in client.hkeys(daemons_key("kmrl"))}
    assert registered == {beat.daemon_id, "elsewhere:1", other_container, old_format}  # the dead one is forgotten
    beat.stop()
    assert not client.exists(beat.key)
    assert {k.decode() for k in client.hkeys(daemons_key("kmrl"))} == {"elsewhere:1", other_container, old_format}


def test_heartbeat_survives_redis_being_down():
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    beat = Heartbeat(client, "kmrl", 3, dict, LOG)
    assert beat.beat() is False and beat.up is False


# --------------------------------------------------------------------------- health


@pytest.fixture
def health_config(tmp_path: Path, redis_server, redis_client):
    (tmp_path / "connectors").mkdir()
    (tmp_path / "sync.yaml").write_text(f"redis: {{url: '{redis_server.url}'}}\ndaemon: {{heartbeat_ttl: 5s}}\n")
    return load_config(tmp_path / "sync.yaml"), redis_client


def test_health_reports_a_registered_daemon_without_heartbeat(health_config):
    config, client = health_config
    assert status.health_problems(config) == []
    assert status.health_problems(config, require_daemon=True) == [
        "no daemon heartbeat: kmrl-sync run is not running (or cannot reach Redis)"]
    beat = Heartbeat(client, "kmrl", 5, dict, LOG)
    beat.beat()
    assert status.health_problems(config, require_daemon=True) == []
    client.delete(beat.key)  # what the TTL does to a SIGKILLed or hung daemon
    [problem] = status.health_problems(config)
    assert "stale heartbeat" in problem and beat.daemon_id in problem


# --------------------------------------------------------------------------- metrics, sd_notify


def test_parse_listen():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_metrics_count_documents_runs_and_last_success():
    metrics = Metrics()
    metrics.observe_run(RunSummary(connector="a", run_id="r1", created=3, unchanged=5, seconds=0.2))
    metrics.observe_run(RunSummary(connector="a", run_id="r2", result="failed", error="x", seconds=0.1))
    value = metrics.registry.get_sample_value
    assert value("kmrl_sync_documents_total", {"connector": "a", "event": "created"}) == 3
    assert value("kmrl_sync_runs_total", {"connector": "a", "result": "failed"}) == 1
    assert value("kmrl_sync_run_duration_seconds_count", {"connector": "a"}) == 2
    assert value("kmrl_sync_connector_failing", {"connector": "a"}) == 1
    assert value("kmrl_sync_last_success_timestamp_seconds", {"connector": "a"}) > 0


def test_notifier_speaks_the_sd_notify_protocol(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    notifier.ready("3 connectors")
    notifier.status("busy")
    notifier.status("busy")  # unchanged: not resent
    notifier.watchdog()
    notifier.stopping()
    received = [sock.recv(1024).decode() for _ in range(4)]
    assert received == ["READY=1\nSTATUS=3 connectors", "STATUS=busy", "WATCHDOG=1", "STOPPING=1"]
    assert Notifier.watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is for another process
    assert Notifier.watchdog_interval() is None
    sock.close()


# --------------------------------------------------------------------------- watch filtering


def test_watch_events_are_filtered_by_globs_and_kind():
    notified = []
    handler = _Handler("/root", PathFilter(["**/*"], ["*.tmp", "cache/"]), lambda: notified.append(1))
    assert handler.relevant(FileCreatedEvent("/root/a/report.pdf"))
    assert not handler.relevant(FileCreatedEvent("/root/a/scratch.tmp"))
    assert not handler.relevant(FileCreatedEvent("/root/cache/x.pdf"))
    assert not handler.relevant(FileOpenedEvent("/root/a/report.pdf"))  # our own reads
    assert not handler.relevant(FileClosedNoWriteEvent("/root/a/report.pdf"))
    assert not handler.relevant(DirModifiedEvent("/root/a"))
    assert handler.relevant(FileMovedEvent("/elsewhere/x.pdf", "/root/x.pdf"))  # moved in
    assert handler.relevant(FileMovedEvent("/root/x.pdf", "/elsewhere/x.pdf"))  # moved out
    assert not handler.relevant(FileMovedEvent("/root/a.tmp", "/root/b.tmp"))


def test_watch_tree_notifies_on_a_new_file_and_returns_when_stopped(tmp_path):
    changed = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=watch_tree, args=(tmp_path, PathFilter(["**/*"], []), changed.set, stop, LOG))
    thread.start()
    try:
        wait_until(lambda: (tmp_path / "probe.txt").write_text("x") and changed.wait(0.2), what="a change event")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- run coalescing, reload


class FakeScheduler:
    def __init__(self):
        self.soon: list[tuple[str, str]] = []
        self.delays: list[float] = []
        self.added: list[str] = []
        self.removed: list[str] = []
        self.maintenance: dict[str, object] = {}

    def add_maintenance(self, job_id, schedule, job):
        self.maintenance[job_id] = schedule

    def remove_maintenance(self, job_id):
        self.maintenance.pop(job_id, None)

    def add(self, name, schedule):
        self.added.append(name)

    def remove(self, name):
        self.removed.append(name)

    def run_soon(self, name, delay, reason):
        self.soon.append((name, reason))
        self.delays.append(delay)

    def next_runs(self):
        return {}


def make_daemon(tmp_path: Path, connectors: dict[str, str]):
    from kmrl_sync.daemon.service import Daemon

    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "sync.yaml").write_text("redis: {url: 'redis://127.0.0.1:1/0'}\n")
    write_connectors(tmp_path, connectors)
    daemon = Daemon(None, load_config(tmp_path / "sync.yaml"))
    daemon.scheduler = FakeScheduler()
    daemon.engine.publish = lambda *a, **k: None
    for cfg in daemon.config.connectors.values():
        daemon._start_connector(cfg)
    return daemon


def write_connectors(tmp_path: Path, connectors: dict[str, str]) -> None:
    for old in (tmp_path / "connectors").glob("*.yaml"):
        old.unlink()
    for name, every in connectors.items():
        root = tmp_path / "src" / name
        root.mkdir(parents=True, exist_ok=True)
        (tmp_path / "connectors" / f"{name}.yaml").write_text(
            f"type: filesystem\nschedule: {{every: {every}}}\noptions: {{root: {root}}}\n")


def test_changes_during_a_run_coalesce_into_exactly_one_more_run(tmp_path):
    daemon = make_daemon(tmp_path, {"a": "1h"})
    runs: list[str] = []
    inside = threading.Event()
    proceed = threading.Event()

    def fake_run_once(slot, reason):
        runs.append(reason)
        if len(runs) == 1:
            inside.set()
            proceed.wait(5)

    daemon._run_once = fake_run_once
    worker = threading.Thread(target=daemon._job, args=("a", "schedule"))
    worker.start()
    assert inside.wait(5)
    for _ in range(5):
        daemon._on_change("a")  # five notifications while it runs
    daemon._job("a", "schedule")  # a tick while it runs: skipped (max one run at a time)
    proceed.set()
    worker.join(5)
    assert runs == ["schedule", "watch"]
    daemon._on_change("a")
    daemon._on_change("a")
    assert daemon.scheduler.soon == [("a", "watch")]  # idle: one pending watch run for the burst
    daemon._job("a", "watch")
    assert runs == ["schedule", "watch", "watch"]


def test_a_settled_change_is_synced_at_once_and_others_after_the_watch_delay(tmp_path):
    from kmrl_sync.daemon.service import WATCH_DELAY

    daemon = make_daemon(tmp_path, {"a": "1h"})
    daemon._on_change("a")  # a file event: wait for the rest of its burst
    daemon._on_change("a")
    assert daemon.scheduler.delays == [WATCH_DELAY] and WATCH_DELAY > 0
    daemon._on_change("a", settled=True)  # a mail the server announced: no reason to wait
    assert daemon.scheduler.delays == [WATCH_DELAY, 0.0]
    assert daemon.scheduler.soon == [("a", "watch")] * 2  # the same one-off job, brought forward


def test_reload_diffs_connectors_and_keeps_the_old_config_when_the_new_one_is_invalid(tmp_path):
    daemon = make_daemon(tmp_path, {"a": "1h", "b": "1h", "c": "1h"})
    write_connectors(tmp_path, {"a": "1h", "b": "2h", "d": "1h"})
    assert daemon.reload()
    assert sorted(daemon._slots) == ["a", "b", "d"]
    assert sorted(daemon.scheduler.removed) == ["b", "c"] and daemon.scheduler.added[-2:] == ["b", "d"]
    assert daemon.engine.config.connectors["b"].schedule.every == 7200

    (tmp_path / "connectors" / "bad.yaml").write_text("type: filesystem\nschedul: {every: 1m}\n")
    before = dict(daemon._slots)
    assert daemon.reload() is False
    assert daemon._slots == before and sorted(daemon.config.connectors) == ["a", "b", "d"]
