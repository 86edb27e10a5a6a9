"""Watch-mode threads: one per connector whose type supports `watch` and whose options ask for it.

A watcher only signals "changed"; the daemon turns that into a coalesced sync. A watcher that
fails (inotify limit, root missing, IMAP connection dropped) is logged and restarted after a back-off,
while the connector's schedule keeps it synced in the meantime.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kmrl_sync.config.models import ConnectorConfig

RESTART_BACKOFF = (1.0, 5.0, 15.0, 60.0)


@dataclass
class _Watcher:
    name: str
    stop: threading.Event
    thread: threading.Thread


class Watchers:
    def __init__(self, engine_for: Callable[[], Any], notify: Callable[[str, bool], None], log: Any):
        self._engine_for = engine_for
        self._notify = notify
        self._log = log
        self._watchers: dict[str, _Watcher] = {}

    def start(self, cfg: ConnectorConfig) -> bool:
        """Start watching `cfg` if its type and options ask for it; return whether it did."""
        engine = self._engine_for()
        stop = threading.Event()
        connector = engine.make_connector(cfg, engine.state(cfg.name), stop.is_set)
        if not (connector.supports_watch and connector.watch_enabled()):
            connector.close()
            return False
        thread = threading.Thread(target=self._run, args=(cfg.name, connector, stop), name=f"watch-{cfg.name}",
                                  daemon=True)
        self._watchers[cfg.name] = _Watcher(cfg.name, stop, thread)
        thread.start()
        return True

    def _run(self, name: str, connector: Any, stop: threading.Event) -> None:
        log = self._log.bind(connector=name)
        failures = 0
        try:
            while not stop.is_set():
                try:
                    connector.watch(lambda settled=False: self._notify(name, settled), stop)
                    failures = 0
                except Exception as exc:
                    delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
                    failures += 1
                    log.error("watch failed; the schedule keeps syncing, retrying the watch later",
                              error=f"{type(exc).__name__}: {exc}", retry_in=delay)
                    stop.wait(delay)
        finally:
            try:
                connector.close()
            except Exception:
                log.exception("closing the watcher failed")

    def names(self) -> list[str]:
        return sorted(self._watchers)

    def stop(self, name: str) -> None:
        watcher = self._watchers.pop(name, None)
        if watcher is not None:
            watcher.stop.set()
            watcher.thread.join(timeout=10)

    def stop_all(self) -> None:
        for name in list(self._watchers):
            self._watchers[name].stop.set()
        for name in list(self._watchers):
            self.stop(name)
