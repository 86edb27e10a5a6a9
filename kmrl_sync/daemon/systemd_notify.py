"""sd_notify for `Type=notify`: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Every call is a no-op outside systemd (no `NOTIFY_SOCKET`), so the same code runs in a terminal,
in tests and under systemd.
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None
        if self._notifier is not None and self._notifier.socket is not None:
            # Never block the main loop on a full notification queue (a busy or stuck service
            # manager): a dropped STATUS or WATCHDOG ping is harmless, a hung daemon is not.
            self._notifier.socket.setblocking(False)
        self._last_status = ""

    def _send(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half of `WatchdogSec=` (systemd's advice for the ping period), or None without a watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None

    def ready(self, status: str = "") -> None:
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        self._send("RELOADING=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")
