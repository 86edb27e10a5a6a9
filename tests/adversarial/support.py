"""Running `kmrl-sync check` on hostile configuration, within bounds the tests assert."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

# Safety bounds, not speed assertions: `check` on anything must end well inside them.
TIME_BOUND_S = 10.0
PEAK_RSS_BOUND_MB = 100


@dataclass
class Checked:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float | None

    @property
    def problems(self) -> list[str]:
        """The problem lines of `configuration is invalid:`, without their indent."""
        return [line[2:] for line in self.stderr.splitlines() if line.startswith("  ")]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Checked:
    """`kmrl-sync ARGS` in a subprocess with its peak memory; fails the test past TIME_BOUND_S."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.cli_measured", *args],
        capture_output=True, text=True, timeout=TIME_BOUND_S * 3, cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    match = re.search(r"\npeak_rss_kb=(\d+)\n?$", result.stderr)
    stderr = result.stderr[: match.start()] if match else result.stderr
    return Checked(result.returncode, result.stdout, stderr, int(match.group(1)) / 1024 if match else None)


def assert_refused(result: Checked, *files: Path | str) -> None:
    """Exit 2, every problem `file: ...` naming one of `files`, no traceback, within the bounds."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("configuration is invalid:\n"), result.stderr
    assert result.problems, result.stderr
    names = tuple(f"{f}: " for f in files)
    for problem in result.problems:
        assert problem.startswith(names) or problem.startswith("... and "), (problem, files)
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", problem), problem
    assert_bounded(result)


def assert_bounded(result: Checked) -> None:
    assert result.peak_rss_mb is not None, result.stderr
    assert result.peak_rss_mb < PEAK_RSS_BOUND_MB, result.peak_rss_mb
