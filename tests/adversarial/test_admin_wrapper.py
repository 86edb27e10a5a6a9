"""Issue 15: on an installed host, `status`/`health`/`queue` failed with "environment variable
CREDENTIALS_DIRECTORY is not set" once sync.yaml read a systemd credential. The way out is the admin
wrapper install.sh puts at /usr/local/sbin/kmrl-sync (systemd/kmrl-sync-admin): as root it runs the
command as the service does. Under systemd it is a transient unit (the live-systemd test runs it);
here, without systemd, the fallback: the credentials copied to a private folder the service user
alone reads, the environment file applied, the command run as that user, the folder removed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

WRAPPER = REPO / "systemd" / "kmrl-sync-admin"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the wrapper's fallback switches users: needs root"),
    pytest.mark.skipif(Path("/run/systemd/system").is_dir(),
                       reason="systemd runs here: the wrapper takes systemd-run (tested under a live systemd)"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed"),
]


@pytest.fixture
def host() -> Iterator[Path]:
    """An installed layout (prefix, etc, state) that an unprivileged user can traverse."""
    root = Path(tempfile.mkdtemp(prefix="kmrl-admin-"))
    root.chmod(0o755)
    for folder in ("prefix/bin", "etc/connectors", "state"):
        (root / folder).mkdir(parents=True)
    (root / "etc" / "credentials").mkdir(mode=0o700)
    (root / "etc" / "credentials" / "imap").write_text("the-imap-password\n")
    (root / "etc" / "credentials" / "imap").chmod(0o600)
    (root / "etc" / "kmrl-sync.env").write_text('# comment\nKMRL_ADMIN_TEST="from the env file"\n')
    yield root
    shutil.rmtree(root)


def wrapper(host: Path, *args: str, user: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "KMRL_SYNC_CONFIG")}
    env.update(KMRL_SYNC_PREFIX=str(host / "prefix"), KMRL_SYNC_ETC=str(host / "etc"),
               KMRL_SYNC_STATE=str(host / "state"), KMRL_SYNC_USER=user)
    return subprocess.run(["sh", str(WRAPPER), *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_command_runs_as_the_service_user_with_its_credentials(host):
    probe = host / "prefix" / "bin" / "kmrl-sync"
    probe.write_text('#!/bin/sh\necho "user=$(id -un) cwd=$(pwd) config=$KMRL_SYNC_CONFIG env=$KMRL_ADMIN_TEST"\n'
                     'ls -l "$CREDENTIALS_DIRECTORY" | tail -n +2\ncat "$CREDENTIALS_DIRECTORY/kmrl_imap"\n'
                     'echo "args=$*"\necho "$CREDENTIALS_DIRECTORY" > /tmp/kmrl-admin-test-creds\nexit 7\n')
    probe.chmod(0o755)
    result = wrapper(host, "status", "--json", user="nobody")
    assert result.returncode == 7, result  # the command's own exit code
    lines = result.stdout.splitlines()
    assert lines[0] == f"user=nobody cwd={host / 'state'} config={host / 'etc' / 'sync.yaml'} env=from the env file"
    assert lines[1].startswith("-r-------- 1 nobody ") and lines[1].endswith(" kmrl_imap"), lines
    assert lines[2:] == ["the-imap-password", "args=status --json"]
    creds = Path(Path("/tmp/kmrl-admin-test-creds").read_text().strip())
    Path("/tmp/kmrl-admin-test-creds").unlink()
    assert not creds.exists()  # the copy of the credentials is gone with the command


def test_check_passes_through_the_wrapper_and_names_it_without(host):
    """The real CLI (as root here: the test's Python lives where other users cannot run it)."""
    cli = host / "prefix" / "bin" / "kmrl-sync"
    cli.write_text(f"#!/bin/sh\nexec {sys.executable} -m kmrl_sync \"$@\"\n")
    cli.chmod(cli.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (host / "etc" / "sync.yaml").write_text('redis: {url: "redis://127.0.0.1:1"}\nconnectors_dir: connectors\n')
    (host / "etc" / "connectors" / "mail.yaml").write_text(
        "type: imap\nenabled: false\noptions: {host: mail.example, username: u,\n"
        "  password_file: '${CREDENTIALS_DIRECTORY}/kmrl_imap'}\n")
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    direct = subprocess.run([str(cli), "check", "-c", str(host / "etc" / "sync.yaml")], capture_output=True,
                            text=True, timeout=120, env={**env, "PYTHONPATH": str(REPO)})
    assert direct.returncode == 2, direct
    assert "environment variable CREDENTIALS_DIRECTORY is not set" in direct.stderr
    assert "sudo kmrl-sync" in direct.stderr
    os.environ["PYTHONPATH"] = str(REPO)
    try:
        through = wrapper(host, "check", user="root")
    finally:
        del os.environ["PYTHONPATH"]
    assert through.returncode == 0, through
    assert through.stdout.strip() == f"{host / 'etc' / 'sync.yaml'}: ok (1 connector(s))"
