"""Graceful stop: the first SIGTERM/SIGINT finishes the current batch, a second one forces.

Forcing is safe because every batch is committed atomically: a forced exit just means the batch in
flight is redone by the next run.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

FORCED_EXIT = 128 + signal.SIGTERM


class StopFlag:
    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}
        self.on_stop: Callable[[], None] | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._event.wait(timeout)

    def set(self) -> None:
        self._event.set()
        if self.on_stop is not None:
            self.on_stop()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self._event.is_set():
            os._exit(FORCED_EXIT)
        self.set()

    @classmethod
    def install(cls, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> StopFlag:
        flag = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                flag._previous[sig] = signal.signal(sig, flag._handle)
        return flag

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
