"""startup.py CONFIG CONNECTOR -- where the time of a no-change `kmrl-sync sync` goes.

Runs the sync a few times and reports: bare interpreter start, the whole process, the engine's
own run time, and `python -X importtime` grouped by top-level package (cumulative, first import).
"""

from __future__ import annotations

import collections
import re
import statistics
import subprocess
import sys
import time

PY = sys.executable
config, name = sys.argv[1], sys.argv[2]


def timed(args: list[str], runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(args, capture_output=True, check=False)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


sync = [PY, "-m", "kmrl_sync", "sync", name, "-c", config]
print(f"python -c pass                      {timed([PY, '-c', 'pass']):.3f} s")
print(f"python -S -c pass (no site)         {timed([PY, '-S', '-c', 'pass']):.3f} s")
print(f"kmrl-sync sync {name} (no change)   {timed(sync):.3f} s  (median of 5, whole process)")
out = subprocess.run(sync, capture_output=True, text=True).stdout
match = re.search(r"in ([0-9.]+)s", out)
print(f"  of which the engine's run:        {match.group(1) if match else '?'} s (lease, IMAP login + STATUS, commit)")
err = subprocess.run([PY, "-X", "importtime", *sync[1:]], capture_output=True, text=True).stderr
groups: collections.Counter[str] = collections.Counter()
for line in err.splitlines():
    m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
    if m and not m.group(3):  # top-level imports only: their cumulative time
        top = m.group(4)
        key = top if top.startswith("kmrl_sync") else top.split(".")[0]
        groups[key] += int(m.group(2))
total = sum(groups.values())
print(f"imports, total cumulative:          {total / 1e6:.3f} s")
for key, us in groups.most_common(15):
    print(f"  {us / 1e3:7.1f} ms  {key}")
