"""`kmrl-sync run`: the long-running service.

The main thread only handles signals, reloads and systemd notifications; connector runs happen on
the scheduler's bounded pool (`daemon.max_parallel`). Every run takes the connector's lease with
`wait=0`: when another daemon (this host or another) holds it, this tick is simply skipped, which
is how several hosts share one config: whoever is free first runs a due connector, and a dead
host's connectors are picked up once its leases expire.

Stopping (SIGTERM/SIGINT) asks every run to end after its current batch, waits for them (each
releases its lease), unregisters the heartbeat and exits 0; a second signal exits at once, which is
safe because every batch is committed atomically. SIGHUP re-reads the whole config; an invalid one
is logged and the running config stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import structlog

from kmrl_sync import __version__
from kmrl_sync.config.models import Config, ConnectorConfig
from kmrl_sync.daemon.heartbeat import Heartbeat
from kmrl_sync.daemon.metrics import Metrics
from kmrl_sync.daemon.scheduler import ConnectorScheduler
from kmrl_sync.daemon.signals import StopFlag
from kmrl_sync.daemon.status import eviction_warning
from kmrl_sync.daemon.systemd_notify import Notifier
from kmrl_sync.daemon.watchers import Watchers
from kmrl_sync.engine.connection import connect_config, server_infos
from kmrl_sync.engine.lease import LeaseBusy
from kmrl_sync.engine.runner import Engine, RunSummary
from kmrl_sync.loading.loader import ConfigError, load_config

EXIT_OK, EXIT_FAILED = 0, 1
# Seconds between a change notification and its sync: a burst of events (a file being written and
# renamed) coalesces into one run. Not for a source that reports a change settled and whole (IMAP's
# EXISTS: a mail appears complete, and servers batch their news): its sync starts at once.
WATCH_DELAY = 0.2
WATCH_RETRIES = 10  # a watch run that finds the lease busy retries every second this many times
REDIS_BACKOFF_MAX = 60.0
# Bound to open connections, sockets, threads or the pool: they apply at the next restart only.
RESTART_ONLY = ("redis_url", "redis_password", "redis_cluster", "redis_sentinel", "replicas_to_ack", "key_prefix",
                "state_dir", "metrics")
DAEMON_RESTART_ONLY = ("max_parallel", "heartbeat_ttl", "startup_jitter")


@dataclass
class Slot:
    """One scheduled connector in this daemon; replaced (not mutated) when its config changes."""

    cfg: ConnectorConfig
    cancel: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    rerun: bool = False  # a change was seen while running: run again right after
    watch_pending: bool = False
    watch_retries: int = 0
    redis_failures: int = 0
    backoff_until: float = 0.0


class Daemon:
    def __init__(self, config_path: str | Path | None, config: Config):
        self.config_path = Path(config_path) if config_path else config.path
        self.config = config
        self.log = structlog.get_logger("kmrl_sync.daemon")
        self.engine = Engine(config)
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.stop = StopFlag()
        self._wake = threading.Event()
        self._reload_requested = False
        self._guard = threading.Lock()
        self._slots: dict[str, Slot] = {}
        self.scheduler = ConnectorScheduler(self._job, max_parallel=config.daemon.max_parallel,
                                            startup_jitter=config.daemon.startup_jitter)
        self.watchers = Watchers(lambda: self.engine, self._on_change, self.log)
        self.heartbeat = Heartbeat(
            connect_config(config, socket_timeout=5.0, client_name="kmrl-sync-heartbeat"),
            config.key_prefix, config.daemon.heartbeat_ttl, self._heartbeat_info, self.log,
            on_up=self._on_redis_up)

    # ------------------------------------------------------------------ lifecycle

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        self.stop = StopFlag.install()
        self.stop.on_stop = self._wake.set
        previous_hup = signal.signal(signal.SIGHUP, self._on_hup)
        try:
            if self.config.metrics.listen:
                try:
                    self.metrics.serve(self.config.metrics.listen)
                except OSError as exc:
                    self.log.error("cannot open the metrics endpoint", listen=self.config.metrics.listen,
                                   error=str(exc))
                    return EXIT_FAILED
            self.log.info("daemon starting", version=__version__, config=str(self.config.path),
                          connectors=len(self.config.connectors), max_parallel=self.config.daemon.max_parallel)
            self.heartbeat.start()
            self.scheduler.start()
            self._schedule_gc()
            for cfg in self.config.connectors.values():
                if cfg.enabled:
                    self._start_connector(cfg)
            self.metrics.connectors.set(len(self._slots))
            self.heartbeat.poke()
            self.notifier.ready(self._status_text())  # before any Redis round trip: Redis may be down
            self.engine.publish("daemon_started", connectors=sorted(self._slots), version=__version__)
            self._main_loop()
        finally:
            self._shutdown()
            signal.signal(signal.SIGHUP, previous_hup)
            self.stop.restore()
        return EXIT_OK

    def _main_loop(self) -> None:
        watchdog = Notifier.watchdog_interval()
        tick = min(1.0, watchdog) if watchdog else 1.0
        while not self.stop.requested:
            self._wake.wait(tick)
            self._wake.clear()
            if self.stop.requested:
                break
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            # WATCHDOG=1 only while the scheduler thread dispatches jobs: a wedged scheduler gets
            # the service restarted by systemd instead of silently syncing nothing.
            if watchdog and self.scheduler.alive(within=max(2.0, watchdog)):
                self.notifier.watchdog()
            if self.heartbeat.up is False:
                self.metrics.redis_up.set(0)
            self.notifier.status(self._status_text())

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.log.info("daemon stopping: finishing the current batches")
        self.stop.set()
        self.watchers.stop_all()
        self.scheduler.shutdown()
        self.engine.publish("daemon_stopped", connectors=sorted(self._slots))
        self.heartbeat.stop()
        self.metrics.close()
        self.log.info("daemon stopped")

    def _on_hup(self, _signum: int, _frame: Any) -> None:
        self._reload_requested = True
        self._wake.set()

    def request_reload(self) -> None:
        """What SIGHUP does (for embedding and tests)."""
        self._on_hup(signal.SIGHUP, None)

    # ------------------------------------------------------------------ connectors

    def _start_connector(self, cfg: ConnectorConfig) -> None:
        slot = Slot(cfg)
        with self._guard:
            self._slots[cfg.name] = slot
        self.scheduler.add(cfg.name, cfg.schedule)
        try:
            self.watchers.start(cfg)
        except Exception as exc:  # a watch is an optimisation; the schedule still runs
            self.log.error("could not start watch mode", connector=cfg.name, error=f"{type(exc).__name__}: {exc}")

    def _stop_connector(self, name: str) -> None:
        with self._guard:
            slot = self._slots.pop(name, None)
        if slot is not None:
            slot.cancel.set()  # a run in progress ends after its current batch
        self.scheduler.remove(name)
        self.watchers.stop(name)
        self.metrics.forget(name)

    def _on_change(self, name: str, settled: bool = False) -> None:
        """A watcher saw a relevant change: sync soon, coalescing bursts into one run (at once when
        the change is `settled`; changes seen while the run goes on make one more run after it)."""
        self.metrics.watch_events.labels(name).inc()
        with self._guard:
            slot = self._slots.get(name)
            if slot is None or slot.cancel.is_set():
                return
            slot.watch_retries = 0
            if slot.running:
                slot.rerun = True
                return
            if slot.watch_pending and not settled:
                return
            slot.watch_pending = True
        self.scheduler.run_soon(name, 0.0 if settled else WATCH_DELAY, "watch")

    def _job(self, name: str, reason: str) -> None:
        """Scheduler entry point (pool thread): run `name` unless it is already running here."""
        with self._guard:
            slot = self._slots.get(name)
            if slot is None or slot.cancel.is_set() or self.stop.requested:
                return
            if reason == "watch":
                slot.watch_pending = False
            if slot.running:
                if reason == "watch":
                    slot.rerun = True
                return
            slot.running = True
        try:
            while True:
                self._run_once(slot, reason)
                with self._guard:
                    if slot.rerun and not slot.cancel.is_set() and not self.stop.requested:
                        slot.rerun = False
                        reason = "watch"
                        continue
                    break
        finally:
            with self._guard:
                slot.running = False
                slot.rerun = False

    def _run_once(self, slot: Slot, reason: str) -> None:
        name = slot.cfg.name
        if time.monotonic() < slot.backoff_until:
            return
        log = self.log.bind(connector=name)
        engine = self.engine
        self.metrics.lease_held.labels(name).set(1)
        try:
            summary = engine.run(name, wait=0,
                                 should_stop=lambda: self.stop.requested or slot.cancel.is_set())
        except LeaseBusy as exc:
            self.metrics.lease_busy.labels(name).inc()
            log.debug("skipped: another process is syncing it", holder=exc.holder.describe(), reason=reason)
            if reason == "watch" and slot.watch_retries < WATCH_RETRIES:
                slot.watch_retries += 1  # the holder may have started before the change: look again
                self.scheduler.run_soon(name, 1.0, "watch")
            return
        except redis.RedisError as exc:
            slot.redis_failures += 1
            delay = min(REDIS_BACKOFF_MAX, 2.0 ** min(slot.redis_failures, 6))
            slot.backoff_until = time.monotonic() + delay
            log.warning("redis unavailable; skipping runs for a while", error=str(exc), retry_in=delay)
            return
        except Exception:
            log.exception("run crashed")
            return
        finally:
            self.metrics.lease_held.labels(name).set(0)
        slot.redis_failures = 0
        self._observe(summary)

    def _observe(self, summary: RunSummary) -> None:
        self.metrics.observe_run(summary)

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Re-read all config; start added connectors, stop removed ones, restart changed ones."""
        self.notifier.reloading()
        try:
            new = load_config(self.config.path)
        except ConfigError as exc:
            self.log.error("reload refused: the new configuration is invalid; the running one stays",
                           problems=exc.problems)
            self.engine.publish("daemon_reload_failed", problems=exc.problems[:20])
            self.notifier.ready(self._status_text())
            return False
        except Exception as exc:  # e.g. a connector type failing to import
            self.log.error("reload refused; the running configuration stays", error=f"{type(exc).__name__}: {exc}")
            self.engine.publish("daemon_reload_failed", problems=[f"{type(exc).__name__}: {exc}"])
            self.notifier.ready(self._status_text())
            return False
        new = self._keep_restart_only(new)
        self.engine = Engine(new, client=self.engine.client)
        self.config = new
        from kmrl_sync import logs

        logs.configure(new.log.level, new.log.format)
        wanted = {n: c for n, c in new.connectors.items() if c.enabled}
        running = {n: s.cfg for n, s in self._slots.items()}
        added = sorted(set(wanted) - set(running))
        removed = sorted(set(running) - set(wanted))
        changed = sorted(n for n in set(wanted) & set(running) if wanted[n] != running[n])
        for name in removed + changed:
            self._stop_connector(name)
        for name in changed + added:
            self._start_connector(wanted[name])
        self.metrics.connectors.set(len(self._slots))
        self._schedule_gc()
        self.heartbeat.poke()
        self.log.info("configuration reloaded", added=added, removed=removed, changed=changed,
                      connectors=len(self._slots))
        self.engine.publish("daemon_reloaded", added=added, removed=removed, changed=changed)
        self.notifier.ready(self._status_text())
        return True

    def _keep_restart_only(self, new: Config) -> Config:
        """Settings bound to open connections and sockets apply at the next restart only."""
        old = self.config
        differing = [f for f in RESTART_ONLY if getattr(new, f) != getattr(old, f)]
        kept = {f: getattr(old.daemon, f) for f in DAEMON_RESTART_ONLY}
        differing += [f"daemon.{f}" for f, value in kept.items() if getattr(new.daemon, f) != value]
        if differing:
            self.log.warning("some changed settings apply only after a restart (systemctl restart kmrl-sync)",
                             settings=differing)
        daemon = new.daemon.model_copy(update=kept)
        return dataclasses.replace(new, daemon=daemon, **{f: getattr(old, f) for f in RESTART_ONLY})

    # ------------------------------------------------------------------ housekeeping

    def _schedule_gc(self) -> None:
        """`blobs.gc: {every | cron}`: run `blobs gc` on that schedule (none: never)."""
        schedule = self.config.blobs_gc.schedule
        if schedule is None:
            self.scheduler.remove_maintenance("blobs-gc")
        else:
            self.scheduler.add_maintenance("blobs-gc", schedule, self._collect_garbage)

    def _collect_garbage(self) -> None:
        """One scheduled `blobs gc` (maintenance thread): logged and published, never fatal."""
        from kmrl_sync.engine.retention import GcBusy, collect_garbage, describe

        engine, config = self.engine, self.config
        try:
            report = collect_garbage(engine.client, engine.blobs, config.key_prefix, grace=config.blobs_gc.grace,
                                     should_stop=lambda: self.stop.requested)
        except GcBusy as exc:
            self.log.info("blobs gc skipped", reason=str(exc))
            with contextlib.suppress(Exception):
                engine.publish("blobs_gc_skipped", reason=str(exc))
            return
        except Exception as exc:  # Redis or the store down: the next tick tries again
            self.log.error("blobs gc failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                engine.publish("blobs_gc_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self.log.info("blobs gc finished", summary=describe(report), **report.as_dict())
        with contextlib.suppress(Exception):
            engine.publish("blobs_gc_finished", **report.as_dict())

    # ------------------------------------------------------------------ reporting

    def _heartbeat_info(self) -> dict[str, Any]:
        with self._guard:
            connectors = sorted(self._slots)
        return {"connectors": connectors, "version": __version__,
                "watching": self.watchers.names(), "next_runs": self.scheduler.next_runs()}

    def _on_redis_up(self) -> None:
        self.metrics.redis_up.set(1)
        self._check_eviction_policy()

    def _check_eviction_policy(self) -> None:
        try:
            policies = {info.get("maxmemory_policy") for info in server_infos(self.heartbeat.client, "memory")}
        except redis.RedisError as exc:
            self.log.warning("could not read Redis INFO", error=str(exc))
            return
        for policy in sorted(p for p in policies if p):
            warning = eviction_warning(policy)
            if warning:
                self.log.warning(warning[0], maxmemory_policy=policy)

    def _status_text(self) -> str:
        with self._guard:
            running = sum(1 for s in self._slots.values() if s.running)
            total = len(self._slots)
        redis_state = {True: "up", False: "UNREACHABLE", None: "connecting"}[self.heartbeat.up]
        return f"{total} connector(s), {running} syncing, redis {redis_state}"
