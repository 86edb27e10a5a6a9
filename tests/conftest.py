"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from tests.support.redis_server import RedisServer

if TYPE_CHECKING:
    from tests.support.s3_server import S3Server

pytest_plugins = [
    "tests.support.dovecot_fixtures",
    "tests.support.graph_fixtures",
    "tests.support.redis_topology_fixtures",
]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Secrets a test loaded in-process (kmrl_sync.redaction) are not scrubbed from the next test's output."""
    yield
    from kmrl_sync import redaction

    redaction.forget_all()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port (tests/support/s3_server.py), shared by the session."""
    from tests.support.s3_server import S3Server  # boto3 and moto load only for the tests that use S3

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A new, empty bucket on the test S3 server."""
    return s3_server.new_bucket()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


class Project:
    """A throw-away sync.yaml + connectors/ folder pointing at the test Redis."""

    def __init__(self, root: Path, redis_url: str):
        self.root = root
        self.redis_url = redis_url
        (root / "connectors").mkdir(parents=True, exist_ok=True)
        self.write_main()

    @property
    def config(self) -> Path:
        return self.root / "sync.yaml"

    def write_main(self, extra: str = "", queue: str = "{format: celery, name: document_processing}") -> None:
        self.config.write_text(textwrap.dedent(f"""\
            redis: {{url: "{self.redis_url}", key_prefix: kmrl}}
            state_dir: ./state
            queue: {queue}
            connectors_dir: connectors
            log: {{level: warning, format: json}}
            """) + extra)

    def connector(self, name: str, body: str) -> Path:
        path = self.root / "connectors" / f"{name}.yaml"
        path.write_text(textwrap.dedent(body))
        return path

    def filesystem(self, name: str, root: Path, options: str = "", extra: str = "") -> Path:
        return self.connector(name, f"type: filesystem\nschedule: {{every: 1m}}\ndepartment: engineering\n"
                                    f"{extra}options:\n  root: {root}\n{textwrap.indent(options, '  ')}")

    def engine(self):
        """An in-process Engine on this project's config (for tests that patch or count)."""
        from kmrl_sync.engine.runner import Engine
        from kmrl_sync.loading.loader import load_config

        return Engine(load_config(self.config))

    def cli(self, *args: str, check: bool | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "kmrl_sync", *args, "-c", str(self.config)],
            capture_output=True, text=True, timeout=timeout, cwd=self.root,
            env={**os.environ, **(env or {})},
        )
        if check is True and result.returncode != 0:
            raise AssertionError(f"kmrl-sync {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result


@pytest.fixture
def project(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis) -> Project:
    return Project(tmp_path / "project", redis_server.url)
