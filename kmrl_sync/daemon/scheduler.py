"""When connectors run: one APScheduler job per enabled connector, plus an internal liveness tick
and housekeeping jobs (`blobs.gc`).

APScheduler's own triggers (`IntervalTrigger`, `CronTrigger.from_crontab`) interpret `schedule:`;
`max_instances=1` keeps one connector from overlapping itself in this process (leases do it across
processes) and `coalesce=True` turns a backlog of missed fire times into a single run. Runs go to a
bounded thread pool (`daemon.max_parallel`); the liveness tick runs on its own one-thread executor
so a pool full of long syncs does not look like a hung scheduler to the systemd watchdog.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from kmrl_sync.config.models import ScheduleConfig

RunFunction = Callable[[str, str], None]  # (connector name, reason: "schedule" | "watch")
TICK_SECONDS = 1.0
MAINTENANCE_FIRST_RUN = 3600.0  # an interval housekeeping job first runs within this long of the start


def trigger_for(schedule: ScheduleConfig) -> BaseTrigger:
    """The APScheduler trigger for a connector's `schedule:` (cron in the host's local time zone)."""
    if schedule.cron is not None:
        return CronTrigger.from_crontab(schedule.cron)
    assert schedule.every is not None
    return IntervalTrigger(seconds=float(schedule.every))


def first_run_delay(schedule: ScheduleConfig, jitter: float, rng: random.Random | None = None) -> float | None:
    """Seconds until an interval connector's first run: soon, but spread over `jitter` so that a
    fleet restarted together does not stampede Redis and the sources. None for cron (its own time)."""
    if schedule.every is None:
        return None
    bound = min(float(jitter), float(schedule.every))
    return (rng or random).uniform(0.0, bound) if bound > 0 else 0.0


class ConnectorScheduler:
    def __init__(self, run: RunFunction, *, max_parallel: int, startup_jitter: float):
        self._run = run
        self._jitter = startup_jitter
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_parallel), "internal": ThreadPoolExecutor(1),
                       "maintenance": ThreadPoolExecutor(1)},
            # misfire_grace_time=None: a run that waited in the pool behind busy workers still runs
            # (once, thanks to coalesce) instead of being dropped as "missed".
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        # "skipped: maximum number of running instances reached" is the expected outcome of a
        # connector slower than its interval; it is not worth a warning every tick.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self.last_tick = time.monotonic()

    def start(self) -> None:
        self._scheduler.start()
        self._scheduler.add_job(self._tick, IntervalTrigger(seconds=TICK_SECONDS), id="__tick__",
                                executor="internal", next_run_time=datetime.now().astimezone())

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    def alive(self, within: float) -> bool:
        """Whether the scheduler thread dispatched its liveness job recently (for WATCHDOG=1)."""
        return self._scheduler.running and time.monotonic() - self.last_tick <= within

    def add(self, name: str, schedule: ScheduleConfig) -> None:
        delay = first_run_delay(schedule, self._jitter)
        extra = {}
        if delay is not None:
            extra["next_run_time"] = datetime.now().astimezone() + timedelta(seconds=delay)
        self._scheduler.add_job(self._run, trigger_for(schedule), args=[name, "schedule"], id=name,
                                name=name, replace_existing=True, **extra)

    def add_maintenance(self, job_id: str, schedule: ScheduleConfig, job: Callable[[], None],
                        rng: random.Random | None = None) -> None:
        """A housekeeping job (`blobs gc`) on its own one-thread executor: it never takes a
        connector's place in the pool, and never overlaps itself. An interval job first runs at a
        random point of its first interval, at most MAINTENANCE_FIRST_RUN in: a daemon restarted
        more often than the interval still runs it, and a fleet restarted together spreads it."""
        extra = {}
        if schedule.every is not None:
            delay = (rng or random).uniform(0.0, min(float(schedule.every), MAINTENANCE_FIRST_RUN))
            extra["next_run_time"] = datetime.now().astimezone() + timedelta(seconds=delay)
        self._scheduler.add_job(job, trigger_for(schedule), id=f"__{job_id}__", name=job_id,
                                executor="maintenance", replace_existing=True, **extra)

    def remove_maintenance(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(f"__{job_id}__")

    def remove(self, name: str) -> None:
        for job_id in (name, f"{name}@watch"):
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(job_id)

    def run_soon(self, name: str, delay: float, reason: str) -> None:
        """A one-off run of `name` in `delay` seconds (watch notifications, retries)."""
        when = datetime.now().astimezone() + timedelta(seconds=delay)
        self._scheduler.add_job(self._run, DateTrigger(run_date=when), args=[name, reason],
                                id=f"{name}@{reason}", replace_existing=True)

    def next_runs(self) -> dict[str, str]:
        """Next scheduled run per connector, ISO 8601 UTC (for the heartbeat and `status`)."""
        out: dict[str, str] = {}
        for job in self._scheduler.get_jobs():
            if job.id.startswith("__") or "@" in job.id or job.next_run_time is None:
                continue
            out[job.id] = job.next_run_time.astimezone().isoformat(timespec="seconds")
        return out

    def shutdown(self) -> None:
        """Stop dispatching and wait for the runs in progress (they see the stop flag and end)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
