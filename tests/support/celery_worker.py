"""A real Celery worker for the tests: the solo worker process, and a probe that knows what it ran.

The worker runs tests.support.celery_app, which appends each task it runs to $KMRL_TEST_TASK_LOG.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from celery import Celery

from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def solo_worker(env: dict[str, str], queue: str, stderr: Any = subprocess.DEVNULL) -> Iterator[subprocess.Popen[str]]:
    """`celery worker` on `queue`, one task at a time (solo pool), stopped (then killed) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.support.celery_app", "worker", "-Q", queue,
         "--pool", "solo", "--concurrency", "1", "--loglevel", "warning", "--without-gossip", "--without-mingle",
         "--without-heartbeat"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def ran(log: Path) -> list[tuple[str, str]]:
    if not log.exists():
        return []
    return [(d["task"], d["document_id"]) for d in map(json.loads, log.read_text().splitlines())]


class Worker:
    """The worker's task log, and a way to know it has run everything queued so far."""

    def __init__(self, log: Path, broker: str) -> None:
        self.log = log
        self.app = Celery("probe", broker=broker)
        self.markers = 0

    def drain(self, timeout: float = 60) -> list[tuple[str, str]]:
        """Every task the worker ran, once it has run all that was queued before this call.

        A marker task is queued behind them and waited for: one queue read first-in first-out by a
        single solo worker, so when the marker has run, nothing queued before it can still show up
        (a fixed sleep after the expected count only hoped so). Markers are left out of the result.
        """
        self.markers += 1
        marker = f"marker:{self.markers}"
        self.app.send_task("delete_document", args=[marker], queue="document_processing")
        wait_until(lambda: ("delete_document", marker) in ran(self.log), timeout,
                   lambda: f"the marker task, the worker ran {ran(self.log)}", interval=0.1)
        return [r for r in ran(self.log) if not r[1].startswith("marker:")]

    def close(self) -> None:
        self.app.close()
