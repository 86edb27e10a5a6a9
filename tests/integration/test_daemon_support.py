"""Helpers for the daemon tests: real `kmrl-sync run` processes and a subscriber to their events.

(A module of helpers, not tests; named test_daemon_* only to stay within the daemon's test files.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from tests.support.waiting import wait_until


def can_fake_hostnames() -> bool:
    """Whether daemons can get hostnames of their own here (root or user namespaces)."""
    try:
        return subprocess.run(["unshare", "--uts", "sh", "-c", "hostname kmrl-probe"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class DaemonProcess:
    """`python -m kmrl_sync run -c <project>` in its own process, logs in a file for post-mortems."""

    def __init__(self, project: Any, env: dict[str, str] | None = None, tag: str = "",
                 hostname: str | None = None):
        self.log_path = Path(project.root) / f"daemon{tag}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        command = [sys.executable, "-m", "kmrl_sync", "run", "-c", str(project.config)]
        if hostname is not None:
            # A host of its own (UTS namespace): leases of another "host" cannot be taken over by
            # checking its pid, only by waiting for their TTL, as across real servers.
            command = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *command]
        self.process = subprocess.Popen(command, cwd=project.root, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})})
        self.pid = self.process.pid  # unshare and sh exec: the daemon keeps this pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> int:
        if self.alive():
            self.signal(signal.SIGTERM)
        try:
            return self.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class EventLog:
    """Every message on `<prefix>:events`, in publish order, from a background subscriber."""

    def __init__(self, client: redis.Redis, channel: str = "kmrl:events"):
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except (redis.ConnectionError, ValueError):
                time.sleep(0.2)  # Redis restarting: redis-py resubscribes on the next call
                continue
            if message and message["type"] == "message":
                event = json.loads(message["data"])
                event["_seen"] = time.monotonic()
                with self._lock:
                    self.events.append(event)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def find(self, since: int = 0, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.snapshot()[since:] if all(e.get(k) == v for k, v in match.items())]

    def wait(self, timeout: float = 30, since: int = 0, **match: Any) -> dict[str, Any]:
        return wait_until(lambda: (self.find(since, **match) or [None])[0], timeout, f"event {match}")

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()


def filesystem_connector(project: Any, name: str, root: Path, every: str = "1s", options: str = "") -> None:
    project.connector(name, f"type: filesystem\nschedule: {{every: {every}}}\ndepartment: ops\n"
                            f"options:\n  root: {root}\n" + "".join(f"  {line}\n" for line in options.splitlines()))


def overlapping_runs(events: list[dict[str, Any]], dead_pids: set[int] = frozenset()) -> list[str]:
    """Runs of one connector that were open at the same time, judged from started/finished events.

    A run of a SIGKILLed daemon never publishes its end: it counts as over when another run of that
    connector starts (the lease guaranteed it had expired by then).
    """
    open_runs: dict[str, dict[str, Any]] = {}
    problems = []
    for event in events:
        name = event.get("connector")
        if event["event"] == "run_started":
            current = open_runs.get(name)
            if current is not None and current["pid"] not in dead_pids:
                problems.append(f"{name}: run {event['run_id']} (pid {event['pid']}) started while run "
                                f"{current['run_id']} (pid {current['pid']}) was still going")
            open_runs[name] = event
        elif event["event"] in ("run_finished", "run_failed"):
            current = open_runs.get(name)
            if current is not None and current["run_id"] == event["run_id"]:
                del open_runs[name]
            elif current is not None:
                problems.append(f"{name}: run {event['run_id']} finished while {current['run_id']} was open")
    return problems
