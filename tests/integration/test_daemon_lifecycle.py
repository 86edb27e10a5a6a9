"""One daemon against the real Redis: reload, stop, systemd notifications, watch mode, Redis outage."""

from __future__ import annotations

import os
import signal
import socket
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.integration.test_daemon_support import DaemonProcess, EventLog, filesystem_connector
from tests.support.documents import document
from tests.support.redis_server import free_port
from tests.support.waiting import wait_until


def make_tree(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i:05d}.txt").write_text(f"document {i}\n")
    return root


@pytest.fixture
def events(redis_client):
    log = EventLog(redis_client)
    yield log
    log.close()


class NotifySocket:
    """A stand-in for systemd's notification socket, read continuously like systemd does."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def received(self, text: str) -> bool:
        return any(text == line for m in list(self.messages) for line in m.split("\n"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_sighup_adds_removes_changes_and_keeps_running_on_invalid_config(project, redis_client, events, tmp_path):
    port = free_port()
    project.write_main(extra=f"daemon: {{startup_jitter: 0.2s, lease_ttl: 5s}}\n"
                             f"metrics: {{listen: '127.0.0.1:{port}'}}\n")
    filesystem_connector(project, "a", make_tree(tmp_path / "a", 3))
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(project, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    try:
        wait_until(lambda: notify.received("READY=1"), 30, "READY=1")
        events.wait(event="run_finished", connector="a")
        wait_until(lambda: notify.received("WATCHDOG=1"), 10, "WATCHDOG=1")

        filesystem_connector(project, "b", make_tree(tmp_path / "b", 2))
        (project.root / "connectors" / "a.yaml").unlink()
        mark = events.mark()
        daemon.signal(signal.SIGHUP)
        reloaded = events.wait(since=mark, event="daemon_reloaded")
        assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["b"], ["a"], [])
        events.wait(since=mark, event="run_finished", connector="b")
        after = events.mark()
        wait_until(lambda: len(events.find(after, event="run_finished", connector="b")) >= 2, 10, "b to run again")
        assert events.find(after, event="run_started", connector="a") == []

        # An invalid new config is refused as a whole; the running one carries on.
        project.connector("broken", "type: no-such-type\nschedule: {every: 1s}\n")
        filesystem_connector(project, "c", make_tree(tmp_path / "c", 1))
        mark = events.mark()
        daemon.signal(signal.SIGHUP)
        failed = events.wait(since=mark, event="daemon_reload_failed")
        assert any("no-such-type" in p for p in failed["problems"])
        after = events.mark()
        events.wait(since=after, event="run_finished", connector="b")
        assert daemon.alive()
        assert events.find(mark, connector="c") == []

        # Fixed and with b changed: c starts, b restarts with its new options.
        (project.root / "connectors" / "broken.yaml").unlink()
        filesystem_connector(project, "b", tmp_path / "b", options="include: ['*.txt']")
        mark = events.mark()
        daemon.signal(signal.SIGHUP)
        reloaded = events.wait(since=mark, event="daemon_reloaded")
        assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (["c"], [], ["b"])
        events.wait(since=mark, event="run_finished", connector="c")

        def counted() -> str | None:
            """The metrics page once it counts c's run: the run's event is published before the
            run returns, and the daemon counts the run just after."""
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return text if 'kmrl_sync_runs_total{connector="c",result="ok"}' in text else None

        metrics = wait_until(counted, 10, "c's run in the metrics")
        assert 'kmrl_sync_documents_total{connector="b",event="created"} 2.0' in metrics
        assert "kmrl_sync_last_success_timestamp_seconds" in metrics
        assert "kmrl_sync_redis_up 1.0" in metrics
        assert (notify.received("RELOADING=1") and notify.received("STATUS=3 connector(s), 0 syncing, redis up")) \
            or (notify.received("RELOADING=1") and any("STATUS=" in m for m in notify.messages))
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]
        assert notify.received("STOPPING=1")
        notify.close()


def test_sigterm_finishes_the_current_batch_releases_the_lease_and_exits_0(project, redis_client, events,
                                                                             tmp_path):
    project.write_main(extra="daemon: {startup_jitter: 0, lease_ttl: 30s}\n")
    filesystem_connector(project, "big", make_tree(tmp_path / "big", 4000), every="1h")
    daemon = DaemonProcess(project)
    try:
        # Freeze the daemon as soon as it holds the lease, i.e. mid-run.
        wait_until(lambda: redis_client.hget("kmrl:{big}:lease", "pid") == str(daemon.pid).encode(), 30,
                   "the daemon to take the lease", interval=0.0005)
        daemon.signal(signal.SIGSTOP)
        # A manual sync must refuse (never run alongside the daemon), naming the holder.
        manual = project.cli("sync", "big", "--wait", "0")
        assert manual.returncode == 1 and "being synced by" in manual.stdout + manual.stderr
        assert str(daemon.pid) in manual.stdout + manual.stderr
        daemon.signal(signal.SIGTERM)  # delivered when it continues, in the middle of its run
        daemon.signal(signal.SIGCONT)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]
    finally:
        if daemon.alive():
            daemon.process.kill()
            daemon.wait()
    started = events.wait(event="run_started", connector="big")
    end = events.wait(event="run_finished", run_id=started["run_id"])
    assert end["result"] in ("interrupted", "ok")  # "ok" only if it was already in its last batch
    committed = redis_client.zcard("kmrl:{big}:known")
    if end["result"] == "interrupted":
        assert 0 < committed < 4000  # the batch in flight was finished and committed, the rest left
    assert redis_client.exists("kmrl:{big}:lease") == 0  # released, not left to expire
    assert redis_client.hlen("kmrl:daemons") == 0  # a clean stop unregisters the daemon
    assert events.wait(event="daemon_stopped")
    # What the interrupted run committed is kept; the next run finishes the rest.
    done = project.cli("sync", "big", check=True)
    assert "big: ok" in done.stdout
    assert redis_client.zcard("kmrl:{big}:known") == 4000


def heartbeat_of(client, pid: int) -> str:
    """The heartbeat key of the daemon with this pid on this host (`kmrl:heartbeat:<host>:<pid>:<8 hex>`)."""
    keys = list(client.scan_iter(f"kmrl:heartbeat:{socket.gethostname()}:{pid}:*"))
    return keys[0].decode() if keys else f"kmrl:heartbeat:{socket.gethostname()}:{pid}:(none yet)"


def test_watch_mode_queues_new_and_deleted_files_without_waiting_for_the_schedule(project, redis_client, events,
                                                                                  tmp_path):
    """The schedule is hourly, so only the watch can queue them; how fast it does is measured in
    bench/ (the IMAP IDLE path), not timed here."""
    project.write_main(extra="daemon: {startup_jitter: 0}\n")
    root = make_tree(tmp_path / "watched", 2)
    filesystem_connector(project, "w", root, every="1h", options="watch: true\nexclude: ['*.tmp']")
    daemon = DaemonProcess(project)
    try:
        events.wait(event="run_finished", connector="w")
        wait_until(lambda: b"w" in (redis_client.hget(heartbeat_of(redis_client, daemon.pid), "watching") or b""),
                   10, "the watch to start")
        (root / "ignored.tmp").write_text("scratch")
        (root / "sub").mkdir()
        (root / "sub" / "new report.txt").write_text("fresh content")
        wait_until(lambda: redis_client.exists("kmrl:doc:{w}:sub/new report.txt"), 60, "the new file to be queued",
                   interval=0.02)
        os.unlink(root / "f00000.txt")
        wait_until(lambda: not redis_client.exists("kmrl:doc:{w}:f00000.txt")
                   or document(redis_client, "w:f00000.txt")["status"] == "deleted", 60,
                   "the deletion to be queued", interval=0.02)
        assert not redis_client.exists("kmrl:doc:{w}:ignored.tmp")
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]


def test_redis_outage_does_not_kill_the_daemon(project, redis_server, redis_client, tmp_path):
    project.write_main(extra="daemon: {startup_jitter: 0, heartbeat_ttl: 3s}\n")
    filesystem_connector(project, "r", make_tree(tmp_path / "r", 2))
    daemon = DaemonProcess(project)
    stats = "kmrl:{r}:stats"
    try:
        wait_until(lambda: redis_client.hget(stats, "last_run_result") == b"ok", 30, "a first run")
        redis_server.restart(down_for=3.0)
        assert daemon.alive(), daemon.output()[-3000:]
        client = redis_server.client()
        before = client.hget(stats, "last_run_finished")
        wait_until(lambda: client.hget(stats, "last_run_finished") != before, 90, "runs to resume after the outage",
                   interval=0.2)
        wait_until(lambda: client.exists(heartbeat_of(client, daemon.pid)), 30,
                   "the heartbeat to come back")
        assert daemon.alive()
    finally:
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.output()[-3000:]
    assert "redis unreachable" in daemon.output()


def test_run_events_carry_an_error_only_when_the_run_failed(project, events, tmp_path):
    """`run_finished` has `error: null` (README, Events); `run_failed` the run's error, bounded."""
    root = make_tree(tmp_path / "docs", 3)
    filesystem_connector(project, "fine", root)
    project.cli("sync", "fine", check=True)
    assert events.wait(event="run_finished", connector="fine")["error"] is None
    doomed = make_tree(tmp_path / "doomed", 3)
    filesystem_connector(project, "doomed", doomed)
    doomed.rename(tmp_path / "elsewhere")  # the root is gone by the time the run lists it
    assert project.cli("sync", "doomed").returncode == 1
    error = events.wait(event="run_failed", connector="doomed")["error"]
    assert isinstance(error, str) and "doomed" in error and len(error) <= 500
