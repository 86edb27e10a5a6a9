"""Every command, with Redis down or refusing the login, and with its output cut short: one clear
line and exit 1, never a traceback.

Found: `queue` and `reset` with Redis down or a wrong password printed a `redis.exceptions`
traceback; `kmrl-sync queue | head -1` and `kmrl-sync connectors | head -1` ended in a
`BrokenPipeError` traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.support.redis_server import RedisServer, free_port

PASSWORD = "s3cret-pass"
REDIS_COMMANDS = ["sync fs", "sync --all", "status", "status --json", "check --connect", "reset fs", "health",
                  "queue", "queue --limit 1"]


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked"), password=PASSWORD).start()
    yield server
    server.stop()


def _failing_urls(locked: RedisServer) -> dict[str, str]:
    return {
        "down": f"redis://127.0.0.1:{free_port()}/0",
        "wrong password": f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked.port}/0",
        "no password": f"redis://127.0.0.1:{locked.port}/0",
    }


@pytest.fixture
def own_logging() -> Iterator[None]:
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _project(tmp_path: Path, url: str) -> Project:
    project = Project(tmp_path / "project", url)
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    (tree / "a.txt").write_text("a")
    project.filesystem("fs", tree)
    return project


@pytest.mark.parametrize("failure", ["down", "wrong password", "no password"])
def test_every_command_reports_a_redis_it_cannot_use_in_one_line(tmp_path, locked_redis, capsys, own_logging,
                                                               failure: str) -> None:
    from kmrl_sync.cli.main import main

    project = _project(tmp_path, _failing_urls(locked_redis)[failure])
    for command in REDIS_COMMANDS:
        try:
            code = main([*command.split(), "-c", str(project.config), "--wait", "0"] if command.startswith("sync")
                        else [*command.split(), "-c", str(project.config)])
        except BaseException as exc:  # a traceback, for an operator
            pytest.fail(f"kmrl-sync {command} with Redis {failure}: {type(exc).__name__}: {exc}")
        out, err = capsys.readouterr()
        assert code == 1, (command, out, err)
        assert "redis" in (out + err).lower() and "Traceback" not in out + err, (command, out, err)
        assert PASSWORD not in out + err
        if command in ("queue", "reset fs"):
            [line] = err.strip().splitlines()
            assert line.startswith(f"kmrl-sync {command.split()[0]}: Redis redis://")


@pytest.mark.parametrize("command", ["queue", "reset fs"])
def test_queue_and_reset_with_a_wrong_password_as_an_operator_runs_them(tmp_path, locked_redis, command) -> None:
    project = _project(tmp_path, _failing_urls(locked_redis)["wrong password"])

    result = project.cli(*command.split())

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "refused the login" in result.stderr and "***" in result.stderr


@pytest.fixture
def synced_project(project, tmp_path):
    """A project with one filesystem connector `fs` (one file), synced once: every command has data."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.txt").write_text("a")
    project.filesystem("fs", tree)
    project.cli("sync", "fs", check=True)
    return project


def _with_stdout_closed(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is already gone: every write to it fails (EPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "kmrl_sync", *args, "-c", str(project.config)],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=project.root)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("command", ["connectors", "queue", "status", "status --json", "health", "check",
                                     "check --connect", "sync fs", "sync fs --json", "reset fs", "--help",
                                     "sync --help", "--version"])
def test_every_command_stops_quietly_when_its_reader_is_gone(synced_project, command: str) -> None:
    project = synced_project
    result = _with_stdout_closed(project, *command.split())

    assert result.stderr == "", result.stderr
    # argparse writes --help and --version itself and ignores a failed write (exit 0); we exit 1,
    # as a process killed by SIGPIPE would fail a `set -o pipefail` pipeline.
    assert result.returncode == (0 if command.endswith(("--help", "--version")) else 1)


def test_queue_piped_to_head(project, tmp_path) -> None:
    """The shell pipeline itself, with more output than a pipe holds (so head exits mid-stream)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(1500):
        (tree / f"document-with-a-longish-name-{i:04d}.txt").write_text(str(i))
    project.filesystem("fs", tree)
    project.cli("sync", "fs", check=True)
    script = (f"set -o pipefail; {sys.executable} -m kmrl_sync queue --limit 2000 -c {project.config} "
              f"2>{tmp_path / 'err'} | head -1")

    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)

    assert result.stdout.startswith("document_processing (celery): 1500 waiting")
    assert (tmp_path / "err").read_text() == ""
    assert result.returncode == 1


@pytest.mark.parametrize("command", ["connectors", "schema", "queue", "status", "status --json", "check",
                                     "sync fs", "sync fs --json"])
def test_output_to_a_full_disk_is_one_line_on_stderr(synced_project, command: str) -> None:
    """`kmrl-sync status > /full/disk/report` used to end in an ENOSPC traceback (twice: once more at exit)."""
    project = synced_project
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "kmrl_sync", *command.split(), "-c", str(project.config)],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, cwd=project.root)

    name = command.split()[0]
    assert result.stderr == f"kmrl-sync {name}: cannot write its output: No space left on device\n", result.stderr
    assert result.returncode == 1
