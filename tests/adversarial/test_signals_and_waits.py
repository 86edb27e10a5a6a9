"""`sync --wait`: a stop request ends the wait at once, and the wait is bounded whatever the value.

Findings: SIGTERM was ignored while `sync --wait` waited for a busy lease (the process exited only
when the wait ran out), and `--wait nan` busy-looped (129,356 EVALSHA in 30 s).
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmrl_sync.cli.main import build_parser
from tests.support.waiting import wait_until

LEASE = "kmrl:{fs}:lease"


@pytest.fixture
def busy(project, tmp_path, redis_client):
    """A connector whose lease a live run on another host holds for the next ten minutes."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    project.filesystem("fs", docs)
    redis_client.hset(LEASE, mapping={"token": "t", "host": "other-host", "pid": "4242", "run_id": "abc123",
                                      "acquired_at": "2026-01-01T00:00:00Z"})
    redis_client.pexpire(LEASE, 600_000)
    redis_client.config_resetstat()
    return project


def _evalsha_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_wait_for_a_busy_lease(busy, redis_client, signum):
    proc = subprocess.Popen([sys.executable, "-m", "kmrl_sync", "sync", "fs", "--wait", "600", "-c", str(busy.config)],
                            cwd=busy.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # The first attempt on the lease is made after the stop handlers are in place.
        wait_until(lambda: _evalsha_calls(redis_client) >= 1, 60, "an attempt on the lease")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)  # a deadline far below the 600 s wait, not a timing
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out + err
    assert "fs: interrupted" in out and "stopped while waiting" in out and "abc123" in out
    assert "Traceback" not in err
    assert redis_client.hget(LEASE, "token") == b"t"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-1", "-0.5", "1e999", "abc", ""])
def test_a_wait_that_is_not_a_finite_duration_is_refused_as_usage(busy, redis_client, value):
    result = busy.cli("sync", "fs", f"--wait={value}")
    assert result.returncode == 2
    assert "--wait" in result.stderr and "Traceback" not in result.stderr
    assert _evalsha_calls(redis_client) == 0  # refused before anything ran


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
def test_the_wait_argument_is_a_finite_non_negative_number_or_refused(value):
    text = value if isinstance(value, str) else repr(value)
    try:
        args = build_parser().parse_args(["sync", "fs", "--wait", text])
    except SystemExit as exc:
        assert exc.code == 2
        return
    assert args.wait >= 0 and args.wait == args.wait and args.wait != float("inf")


def test_a_wait_polls_the_lease_a_bounded_number_of_times(busy, redis_client):
    result = busy.cli("sync", "fs", "--wait", "1")
    assert result.returncode == 1 and "abc123" in result.stdout
    # One attempt, then one every half second until the wait is out: 3 for a 1 s wait. (The
    # busy loop of the finding made tens of thousands.)
    assert 1 <= _evalsha_calls(redis_client) <= 4
