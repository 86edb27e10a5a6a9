"""Per-connector leases: no two processes sync one connector at once, on one host or many.

The lease is a Redis hash with a TTL naming its holder (host, pid, run id). It is renewed by a
background thread while the run lives and every commit checks its token (fencing), so a process
that stalled past its TTL cannot commit over the run that took over. A one-shot run that finds the
lease held by a dead process on this same host takes it over at once: a SIGKILLed manual run must
not block the next one for a whole TTL.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from kmrl_sync.keys import ConnectorKeys
from kmrl_sync.scripts import Scripts
from kmrl_sync.state import utc_now


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    run_id: str
    acquired_at: str
    ttl_ms: int

    def describe(self) -> str:
        return f"run {self.run_id} (pid {self.pid} on {self.host}, since {self.acquired_at})"


class LeaseBusy(RuntimeError):
    def __init__(self, connector: str, holder: Holder):
        self.holder = holder
        super().__init__(f"{connector} is being synced by {holder.describe()}")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, client: redis.Redis, scripts: Scripts, keys: ConnectorKeys, ttl: float, run_id: str):
        self.client = client
        self.scripts = scripts
        self.keys = keys
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.run_id = run_id
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def try_acquire(self, takeover_token: str = "") -> Holder | None:
        """Take the lease; return None on success or the current holder."""
        reply = self.scripts.acquire_lease(
            keys=[self.keys.lease],
            args=[self.token, self.ttl_ms, self.host, os.getpid(), self.run_id, utc_now(), takeover_token],
        )
        if int(reply[0]) == 1:
            return None
        token, host, pid, run_id, since = (x.decode() for x in reply[1:6])
        return Holder(token, host, int(pid or 0), run_id, since, int(reply[6]))

    def acquire(self, wait: float = 0.0, poll: float = 0.5) -> None:
        """Acquire, waiting up to `wait` seconds for a live holder; raise LeaseBusy naming it."""
        deadline = time.monotonic() + wait
        while True:
            holder = self.try_acquire()
            if holder is None:
                break
            if holder.host == self.host and not pid_alive(holder.pid):
                holder = self.try_acquire(takeover_token=holder.token)
                if holder is None:
                    break
            if time.monotonic() >= deadline:
                raise LeaseBusy(self.keys.connector, holder)
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
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
    h = {k.decode(): v.decode() for k, v in raw.items()}
    return Holder(h.get("token", ""), h.get("host", ""), int(h.get("pid") or 0), h.get("run_id", ""),
                  h.get("acquired_at", ""), int(ttl))
