"""Kill a sync at random instants after it has committed: the crash-consistency loop, written once.

Each crash test starts a real `kmrl-sync sync` process several times, SIGKILLs each one at a random
point of its run and then checks that a final run leaves every document queued exactly once. The
kill is tied to progress (a commit seen in Redis), not to a delay after start-up: how far a run gets
in a given time depends on the machine and on how fast the connector is, so a fixed delay would kill
during start-up on a slow machine and after the end on a fast one, and the test would prove little.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.waiting import wait_until

SEED_ENV = "KMRL_CRASH_SEED"


def crash_rng(default: int | None = None) -> tuple[int, random.Random]:
    """The seed and a generator on it: $KMRL_CRASH_SEED (to replay a failure the message named),
    else `default`, else the clock (every run tries other instants)."""
    seed = int(os.environ.get(SEED_ENV, default if default is not None else time.time()))
    return seed, random.Random(seed)


@dataclass
class Kills:
    """What the loop did: the seed to replay it, and the progress each kill left behind."""

    seed: int
    progress: list[int] = field(default_factory=list)  # progress() right after each SIGKILL

    @property
    def count(self) -> int:
        return len(self.progress)


def kill_at_random_commits(command: Sequence[str], cwd: Path, progress: Callable[[], int], *, seed: int,
                           rng: random.Random, runs: int | None = None, targets: Sequence[int] | None = None,
                           jitter: float = 0.05, startup_share: float = 0.0,
                           startup_delay: tuple[float, float] = (0.05, 0.4), timeout: float = 60.0) -> Kills:
    """Start `command` once per run and SIGKILL it at a random instant after a commit.

    `progress()` counts what the runs committed so far (e.g. messages on the queue). A run is killed
    a random 0..`jitter` seconds after progress reaches its target: `targets[i]` for run i if given
    (one run per target), else one more than before the run started (its first commit). With
    `startup_share`, that share of the runs is instead killed a random `startup_delay` after it was
    started (during start-up, the walk or the first commit). A run that ends on its own is not
    counted; one that neither commits nor ends within `timeout` fails the test.
    """
    if targets is None and runs is None:
        raise ValueError("give runs or targets")
    plan = list(targets) if targets is not None else [None] * (runs or 0)
    kills = Kills(seed)
    for target in plan:
        before = progress()
        proc = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            if startup_share and rng.random() < startup_share:
                time.sleep(rng.uniform(*startup_delay))  # a random instant, not a wait for anything
            else:
                goal = before + 1 if target is None else target
                wait_until(lambda p=proc, g=goal: p.poll() is not None or progress() >= g, timeout,
                           f"a commit reaching {goal} (seed {seed})", interval=0.005)
                time.sleep(rng.uniform(0.0, jitter))  # and at a random instant after that commit
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills.progress.append(progress())
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return kills
