"""The scheduler wrapper: APScheduler triggers from `schedule:`, start-up jitter, no overlap."""

from __future__ import annotations

import random
import threading

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from kmrl_sync.config.models import ScheduleConfig
from kmrl_sync.daemon.scheduler import ConnectorScheduler, first_run_delay, trigger_for
from tests.support.waiting import wait_until


def test_triggers_come_from_apscheduler():
    every = trigger_for(ScheduleConfig(every="5m"))
    assert isinstance(every, IntervalTrigger) and every.interval.total_seconds() == 300
    cron = trigger_for(ScheduleConfig(cron="*/10 6-18 * * mon-fri"))
    assert isinstance(cron, CronTrigger)
    assert {f.name: str(f) for f in cron.fields}["minute"] == "*/10"


def test_first_run_is_spread_over_the_jitter_but_never_later_than_one_interval():
    rng = random.Random(7)
    delays = [first_run_delay(ScheduleConfig(every="1h"), 10, rng) for _ in range(200)]
    assert all(0 <= d <= 10 for d in delays) and len(set(delays)) > 100
    assert all(0 <= first_run_delay(ScheduleConfig(every="2s"), 10, rng) <= 2 for _ in range(50))
    assert first_run_delay(ScheduleConfig(every="1m"), 0) == 0
    assert first_run_delay(ScheduleConfig(cron="0 * * * *"), 10) is None


def test_jobs_run_never_overlap_and_stop_when_removed():
    calls: list[tuple[str, str]] = []
    running = {"now": 0, "max": 0}
    lock = threading.Lock()
    release = threading.Event()

    def run(name: str, reason: str) -> None:
        with lock:
            calls.append((name, reason))
            running["now"] += 1
            running["max"] = max(running["max"], running["now"])
        release.wait(0.5)  # slower than its 0.1 s interval
        with lock:
            running["now"] -= 1

    scheduler = ConnectorScheduler(run, max_parallel=4, startup_jitter=0)
    scheduler.start()
    try:
        scheduler.add("slow", ScheduleConfig(every=0.1))
        wait_until(lambda: len(calls) >= 3, what="three runs")
        assert running["max"] == 1  # max_instances=1: never two runs of one connector
        assert "slow" in scheduler.next_runs()
        assert scheduler.alive(within=5)
        scheduler.run_soon("slow", 0.0, "watch")
        release.set()
        wait_until(lambda: ("slow", "watch") in calls, what="the run asked for by the watch")
        scheduler.remove("slow")
        assert "slow" not in scheduler.next_runs()
        settled = calls.count(("slow", "schedule"))
        # Proof that time went on: a job on the same interval runs five times (>= 0.4 s), in which
        # "slow", had it stayed scheduled, would have been due four more times.
        scheduler.add("other", ScheduleConfig(every=0.1))
        wait_until(lambda: calls.count(("other", "schedule")) >= 5, what="five runs of another job")
        assert calls.count(("slow", "schedule")) <= settled + 1  # at most the one already dispatched
    finally:
        release.set()
        scheduler.shutdown()
