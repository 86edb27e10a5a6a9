"""The daemon's heartbeat: proof for `health` and `status` that a daemon is alive and which one.

Each daemon refreshes the hash `<prefix>:heartbeat:<host>:<pid>:<8 hex>` (host, pid, started, connectors,
version, next runs, last beat) with a TTL every few seconds, from its own thread and its own
short-timeout Redis client, so a hung Redis never stalls the scheduler. It is also registered in
`<prefix>:daemons` until a clean exit: a registered daemon without a live heartbeat is one that
crashed or hangs, which is what `health` reports. A daemon starting on a host drops the entries of
provably dead processes of that same host (systemd restarting a crashed daemon clears the alarm);
an entry names its process's boot and PID namespace too, so a daemon in another container with the
same host name is not taken for dead (see `identity`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import redis

from kmrl_sync.engine.connection import TRANSIENT_ERRORS
from kmrl_sync.engine.identity import ProcessIdentity, provably_dead
from kmrl_sync.engine.keys import daemons_key, heartbeat_key
from kmrl_sync.engine.state import utc_now

Info = Callable[[], dict[str, Any]]


def beat_interval(ttl: float) -> float:
    """A third of the TTL (two beats may be lost), at most 5 s so `status` stays current."""
    return max(0.2, min(5.0, ttl / 3))


class Heartbeat:
    def __init__(self, client: redis.Redis, prefix: str, ttl: float, info: Info, log: Any,
                 on_up: Callable[[], None] | None = None, identity: ProcessIdentity | None = None):
        self.client = client
        self.prefix = prefix
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.info = info
        self.log = log
        self.on_up = on_up
        self.identity = identity or ProcessIdentity.current()
        self.host = self.identity.host
        self.pid = self.identity.pid
        # Not just host:pid: two containers with the same host name both run us as pid 1.
        self.daemon_id = self.identity.instance
        self.key = heartbeat_key(prefix, self.daemon_id)
        self.started = utc_now()
        self.up: bool | None = None  # None until the first attempt
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = beat_interval(self.ttl_ms / 1000)
        while not self._stop.is_set():
            try:
                self.beat()
            except Exception:  # a bug here must not silence the heartbeat for good
                self.log.exception("heartbeat failed")
            self._poke.wait(interval)
            self._poke.clear()

    def poke(self) -> None:
        """Beat now (the set of connectors changed) instead of at the next interval."""
        self._poke.set()

    def beat(self) -> bool:
        fields = {"host": self.host, "pid": self.pid, "started": self.started, "beat": utc_now()}
        for name, value in self.info().items():
            fields[name] = value if isinstance(value, str | int | float) else json.dumps(value)
        try:
            if not self._pruned:
                self._prune_dead_local()
            # The heartbeat hash is replaced whole, never left without its TTL: one MULTI on its one key
            # (a Cluster runs a transaction only within one slot; the registry lies in another).
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.key)  # fields from an older version of us must not linger
            pipe.hset(self.key, mapping=fields)
            pipe.pexpire(self.key, self.ttl_ms)
            pipe.execute()
            self.client.hset(daemons_key(self.prefix), self.daemon_id,
                             json.dumps({"host": self.host, "pid": self.pid, "started": self.started,
                                         "boot": self.identity.boot, "pidns": self.identity.pidns,
                                         "start": self.identity.start}))
        except redis.RedisError as exc:
            if self.up is not False:
                what = "redis unreachable" if isinstance(exc, TRANSIENT_ERRORS) else "redis refused the heartbeat"
                self.log.warning(f"{what}; the daemon keeps running and retries", error=str(exc))
            self.up = False
            return False
        was_up, self.up = self.up, True
        if not was_up:
            if was_up is False:
                self.log.info("redis reachable again")
            if self.on_up is not None:
                try:
                    self.on_up()
                except Exception:
                    self.log.exception("redis reconnect hook failed")
        return True

    def _prune_dead_local(self) -> None:
        registry = daemons_key(self.prefix)
        for daemon_id, raw in self.client.hgetall(registry).items():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            other = ProcessIdentity.from_fields({k: str(v) for k, v in entry.items()})
            if other != self.identity and provably_dead(other, self.identity):
                self.client.hdel(registry, daemon_id)
        self._pruned = True

    def stop(self) -> None:
        """Clean exit: stop beating and unregister, so `health` does not call this daemon dead."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            pipe = self.client.pipeline(transaction=False)  # two slots on a Cluster; no TTL at stake
            pipe.hdel(daemons_key(self.prefix), self.daemon_id)
            pipe.delete(self.key)
            pipe.execute()
        except redis.RedisError as exc:
            self.log.warning("could not unregister the heartbeat", error=str(exc))
