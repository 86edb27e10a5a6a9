"""Outbound request budget per tenant, shared by every daemon through Redis (lua/rate_limit.lua).

Graph budgets are per app per tenant, not per process: two daemons syncing two libraries of the
same tenant must together stay under `max_requests_per_second`, and a Retry-After seen by one of
them must hold the other back too. The bucket's key is `keys.ratelimit_key`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from kmrl_sync.engine.scripts import lua_source

MAX_SLEEP = 1.0  # re-ask at least this often, so a stop request is noticed


class SharedRateLimiter:
    def __init__(self, client: redis.Redis, key: str, rate: float, burst: float | None = None,
                 log: object | None = None):
        self.client = client
        self.key = key
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.script = client.register_script(lua_source("rate_limit"))
        self.log = log
        self._warned = False

    def _call(self, op: str, arg: float = 0) -> int:
        return int(self.script(keys=[self.key], args=[self.rate, self.burst, op, int(arg)]))

    def acquire(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Block until a permit is granted (or the run is asked to stop)."""
        while True:
            try:
                wait_ms = self._call("take")
            except redis.RedisError as exc:  # the limiter is a courtesy; Redis trouble fails the commit
                self._warn(exc)
                return
            if wait_ms <= 0 or should_stop():
                return
            time.sleep(min(wait_ms / 1000.0, MAX_SLEEP))

    def pause(self, seconds: float) -> None:
        """Record a Retry-After window for every process of this tenant."""
        try:
            self._call("pause", seconds * 1000)
        except redis.RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned and self.log is not None:
            self._warned = True
            self.log.warning("shared rate limiter unavailable; continuing without it", error=str(exc))
