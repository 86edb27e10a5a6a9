"""Per-connector leases: no two processes sync one connector at once, on one host or many.

The lease is a Redis hash with a TTL naming its holder: token, run id, since when, and who runs it
(host, boot id, PID namespace, pid, process start time: see `identity`). It is renewed by a
background thread while the run lives and every commit checks its token (fencing), so a process
that stalled past its TTL cannot commit over the run that took over. A run that finds the lease
held by a process that is provably dead (same host, boot and PID namespace, and its pid gone or
reused) takes it over at once: a SIGKILLed manual run must not block the next one for a whole TTL.
Any other holder (another host, another container, an older kmrl-sync that did not record its
boot and namespace) is waited for: its lease expires by itself when it stops renewing it.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from kmrl_sync.engine.identity import ProcessIdentity, pid_alive, provably_dead
from kmrl_sync.engine.keys import ConnectorKeys
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import utc_now

__all__ = ["Holder", "Lease", "LeaseBusy", "LeaseWaitStopped", "pid_alive", "read_holder"]

POLL_SECONDS = 0.5  # how often a waiting run asks for the lease again


@dataclass(frozen=True)
class Holder:
    token: str
    run_id: str
    acquired_at: str
    ttl_ms: int
    identity: ProcessIdentity

    @property
    def host(self) -> str:
        return self.identity.host

    @property
    def pid(self) -> int:
        return self.identity.pid

    @classmethod
    def from_fields(cls, fields: dict[str, str], ttl_ms: int) -> Holder:
        return cls(fields.get("token", ""), fields.get("run_id", ""), fields.get("acquired_at", ""), ttl_ms,
                   ProcessIdentity.from_fields(fields))

    def describe(self) -> str:
        return f"run {self.run_id} ({self.identity.describe()}, since {self.acquired_at})"


class LeaseBusy(RuntimeError):
    def __init__(self, connector: str, holder: Holder):
        self.holder = holder
        super().__init__(f"{connector} is being synced by {holder.describe()}")


class LeaseWaitStopped(LeaseBusy):
    """A stop was requested (SIGTERM, Ctrl-C) while waiting for a busy lease."""

    def __init__(self, connector: str, holder: Holder):
        super().__init__(connector, holder)
        self.args = (f"stopped while waiting for {connector}, held by {holder.describe()}",)


def _pairs(raw: list[bytes]) -> dict[str, str]:
    return {raw[i].decode("utf-8", "replace"): raw[i + 1].decode("utf-8", "replace")
            for i in range(0, len(raw) - 1, 2)}


class Lease:
    def __init__(self, client: redis.Redis, scripts: Scripts, keys: ConnectorKeys, ttl: float, run_id: str):
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.run_id = run_id
        self.token = uuid.uuid4().hex
        self.me = ProcessIdentity.current()
        self.host = self.me.host
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def try_acquire(self, takeover_token: str = "") -> Holder | None:
        """Take the lease; return None on success or the current holder."""
        about_me = {"run_id": self.run_id, "acquired_at": utc_now(), **self.me.fields()}
        args: list[str | int] = [self.token, self.ttl_ms, takeover_token]
        for field, value in about_me.items():
            args += [field, value]
        reply = self.scripts.acquire_lease(keys=[self.keys.lease], args=args)
        if int(reply[0]) == 1:
            return None
        return Holder.from_fields(_pairs(reply[2:]), int(reply[1]))

    def acquire(
        self,
        wait: float = 0.0,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        pause: Callable[[float], object] = time.sleep,
        poll: float = POLL_SECONDS,
    ) -> None:
        """Acquire, waiting up to `wait` seconds for a live holder; raise LeaseBusy naming it.

        `pause(seconds)` sleeps between attempts; give it a stop flag's wait so a signal ends the
        wait at once (LeaseWaitStopped) instead of at the next attempt.
        """
        if not math.isfinite(wait) or wait < 0:
            raise ValueError(f"lease wait must be a finite number of seconds >= 0, not {wait!r}")
        deadline = time.monotonic() + wait
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if provably_dead(holder.identity, self.me):
                holder = self.try_acquire(takeover_token=holder.token)
                if holder is None:
                    break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeaseBusy(self.keys.connector, holder)
            if should_stop():
                raise LeaseWaitStopped(self.keys.connector, holder)
            pause(min(poll, remaining))
            if should_stop():
                raise LeaseWaitStopped(self.keys.connector, holder)
        self._start_renewing()

    def _start_renewing(self) -> None:
        self._stop.clear()
        self.lost.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.keys.connector}", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    self.lost.set()
                    return
            except redis.RedisError:
                continue  # transient: the next tick retries; the commit fence protects the data

    def renew(self) -> bool:
        return int(self.scripts.renew_lease(keys=[self.keys.lease], args=[self.token, self.ttl_ms])) == 1

    def release(self) -> bool:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None
        try:
            return int(self.scripts.release_lease(keys=[self.keys.lease], args=[self.token])) == 1
        except redis.RedisError:
            return False  # it expires by itself


def read_holder(client: redis.Redis, keys: ConnectorKeys) -> Holder | None:
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.lease)
    pipe.pttl(keys.lease)
    raw, ttl = pipe.execute()
    if not raw:
        return None
    fields = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}
    return Holder.from_fields(fields, int(ttl))
