"""Soak: one `kmrl-sync run` with N filesystem connectors for M minutes; RSS and open fds must stay flat.

    .venv/bin/python bench/soak/soak.py [--minutes 30] [--connectors 20] [--every 5s] [--out DIR]

Starts a private redis-server on a free loopback port, N source folders (a quarter in watch mode)
with files being created, edited and deleted all the time, and the daemon. Every 10 s it samples the
daemon's RSS (/proc/<pid>/status) and open file descriptors (/proc/<pid>/fd) into samples.csv.
At the end it compares the first and the last fifth of the run (after a warm-up) and exits 1 when
RSS grew by more than --max-rss-growth (default 15%) or the fd count by more than --max-fd-growth
(default 5). Results go to bench/soak/README.md by hand.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer  # noqa: E402

SAMPLE_EVERY = 10.0
WARMUP = 60.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def make_sources(base: Path, n: int, files: int) -> list[Path]:
    roots = []
    for i in range(n):
        root = base / "sources" / f"s{i:02d}"
        for j in range(files):
            path = root / f"dir{j % 5}" / f"doc{j:04d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"source {i} document {j}\n" * 20)
        roots.append(root)
    return roots


def churn(roots: list[Path], rng: random.Random) -> None:
    """A few creations, edits and deletions somewhere, as users would."""
    for _ in range(10):
        root = rng.choice(roots)
        path = root / f"dir{rng.randrange(5)}" / f"churn{rng.randrange(50):03d}.txt"
        if path.exists() and rng.random() < 0.3:
            path.unlink()
        else:
            path.write_text(f"edit {time.time()}\n" * rng.randrange(1, 200))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--connectors", type=int, default=20)
    parser.add_argument("--files", type=int, default=200, help="files per source folder at the start")
    parser.add_argument("--every", default="5s", help="schedule of every connector")
    parser.add_argument("--out", type=Path, default=None, help="where to keep samples.csv and logs")
    parser.add_argument("--max-rss-growth", type=float, default=0.15)
    parser.add_argument("--max-fd-growth", type=int, default=5)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="kmrl-soak-"))
    out = args.out or base
    out.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(base / "redis").start()
    roots = make_sources(base, args.connectors, args.files)
    (base / "connectors").mkdir()
    (base / "sync.yaml").write_text(textwrap.dedent(f"""\
        redis: {{url: "{redis.url}", key_prefix: kmrl}}
        state_dir: {base / 'state'}
        queue: {{format: list, name: soak_queue}}
        connectors_dir: connectors
        log: {{level: warning, format: json}}
        daemon: {{lease_ttl: 30s, heartbeat_ttl: 15s, startup_jitter: 5s, max_parallel: 4}}
        """))
    for i, root in enumerate(roots):
        watch = "\n  watch: true" if i % 4 == 0 else ""
        (base / "connectors" / f"s{i:02d}.yaml").write_text(
            f"type: filesystem\nschedule: {{every: {args.every}}}\noptions:\n  root: {root}{watch}\n")

    log = open(out / "daemon.log", "wb")  # noqa: SIM115
    daemon = subprocess.Popen([sys.executable, "-m", "kmrl_sync", "run", "-c", str(base / "sync.yaml")],
                              cwd=base, stdout=log, stderr=subprocess.STDOUT)
    rng = random.Random(1)
    samples: list[tuple[float, int, int, int]] = []
    started = time.monotonic()
    client = redis.client()
    try:
        with open(out / "samples.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["seconds", "rss_kib", "open_fds", "queued"])
            next_sample = started
            while time.monotonic() - started < args.minutes * 60:
                if daemon.poll() is not None:
                    print(f"daemon exited with {daemon.returncode}; see {out / 'daemon.log'}", file=sys.stderr)
                    return 2
                churn(roots, rng)
                client.ltrim("soak_queue", 0, 999)  # the "workers": keep Redis memory bounded
                if time.monotonic() >= next_sample:
                    row = (round(time.monotonic() - started, 1), rss_kib(daemon.pid), open_fds(daemon.pid),
                           client.llen("soak_queue"))
                    samples.append(row)
                    writer.writerow(row)
                    handle.flush()
                    print(f"t={row[0]:7.1f}s rss={row[1] / 1024:7.1f} MiB fds={row[2]}", flush=True)
                    next_sample += SAMPLE_EVERY
                time.sleep(1.0)
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(120)
        log.close()
        redis.stop()
    steady = [s for s in samples if s[0] >= WARMUP] or samples
    fifth = max(1, len(steady) // 5)
    first, last = steady[:fifth], steady[-fifth:]
    rss_first, rss_last = statistics.mean(s[1] for s in first), statistics.mean(s[1] for s in last)
    fd_first, fd_last = max(s[2] for s in first), max(s[2] for s in last)
    growth = (rss_last - rss_first) / rss_first
    runs = sum(1 for line in (out / "daemon.log").read_text(errors="replace").splitlines() if "error" in line)
    print(f"\n{args.connectors} connectors every {args.every} for {args.minutes:g} min; daemon exit code {code}")
    print(f"RSS  first fifth {rss_first / 1024:.1f} MiB, last fifth {rss_last / 1024:.1f} MiB ({growth:+.1%})")
    print(f"fds  first fifth max {fd_first}, last fifth max {fd_last}; min {min(s[2] for s in samples)} "
          f"max {max(s[2] for s in samples)}")
    print(f"error lines in the daemon log: {runs}; samples in {out / 'samples.csv'}")
    ok = code == 0 and growth <= args.max_rss_growth and fd_last - fd_first <= args.max_fd_growth
    print("FLAT" if ok else "NOT FLAT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
