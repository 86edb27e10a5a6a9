"""What the engine's pipelined commits are worth: the filesystem initial sync with and without them.

    .venv/bin/python bench/fs/pipelining.py [--files 100000] [--rounds 3]

The same tree as bench/fs/bench.py (built once and kept in bench/.work), a private redis-server,
and per round two runs, interleaved: the filesystem type as it is (`pipelined_commits = True`: the
engine commits each batch in the background while the next is produced) and with the attribute
set to False for that run (each batch committed before the walk goes on). Each run is a fresh
process running the real Engine; the time is that of `Engine.run` (start-up excluded: it is the
same in both), with the page cache warmed before each. Prints each run, the medians and the ratio,
and the CPU of both sides (ours, and redis-server's from /proc): what overlapping can save at most
when a core is free, whatever else the machine is doing, is the smaller of the two.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, PrivateRedis, machine, warm_page_cache

from bench import make_tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(config: str, pipelined: bool) -> None:
    sys.path.insert(0, str(REPO))
    from kmrl_sync.connectors.filesystem.connector import FilesystemConnector
    from kmrl_sync.engine.runner import Engine
    from kmrl_sync.loading.loader import load_config

    FilesystemConnector.pipelined_commits = pipelined  # the A/B switch; the type's own value is True
    engine = Engine(load_config(config))
    started = time.perf_counter()
    summary = engine.run("bench")
    seconds = time.perf_counter() - started
    cpu = os.times()
    print(json.dumps({"seconds": seconds, "created": summary.created, "result": summary.result,
                      "cpu": cpu.user + cpu.system}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "PIPELINED"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "on")
        return
    work = args.workdir
    tree = make_tree(work, args.files)
    redis = PrivateRedis(work)
    project = work / "project-pipelining"
    (project / "connectors").mkdir(parents=True, exist_ok=True)
    (project / "sync.yaml").write_text(
        f"redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\nstate_dir: ./state\nlog: {{level: warning}}\n")
    (project / "connectors" / "bench.yaml").write_text(f"type: filesystem\noptions: {{root: '{tree}'}}\n")
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    try:
        for round_no in range(args.rounds):
            for mode in ("on", "off") if round_no % 2 == 0 else ("off", "on"):
                redis.flush()
                warm_page_cache(tree)
                load = os.getloadavg()[0]
                redis_cpu = cpu_seconds(redis.proc.pid)
                out = subprocess.run([sys.executable, __file__, "--child", str(project / "sync.yaml"), mode],
                                     capture_output=True, text=True, check=True, cwd=project)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                assert r["created"] == args.files and r["result"] == "ok", r
                r["load"] = load
                r["redis_cpu"] = cpu_seconds(redis.proc.pid) - redis_cpu
                runs[mode].append(r)
                print(f"round {round_no + 1} pipelined {mode:3s}: {r['seconds']:.2f} s, CPU {r['cpu']:.2f} s, "
                      f"redis-server CPU {r['redis_cpu']:.2f} s, load average {load:.1f}", flush=True)
    finally:
        redis.stop()
    on = statistics.median(r["seconds"] for r in runs["on"])
    off = statistics.median(r["seconds"] for r in runs["off"])
    print(f"\nMachine: {machine()}\nFiles: {args.files}, rounds: {args.rounds} (medians of Engine.run)")
    print(f"pipelined on: {on:.2f} s, off: {off:.2f} s; without it the initial sync takes {off / on:.2f}x "
          f"({off / on - 1:+.0%})")
    ours = statistics.median(r["cpu"] for r in runs["on"] + runs["off"])
    theirs = statistics.median(r["redis_cpu"] for r in runs["on"] + runs["off"])
    print(f"CPU per run (medians): ours {ours:.2f} s (start-up included), redis-server {theirs:.2f} s; done one after "
          f"the other {ours + theirs:.2f} s, overlapped on two free cores at best {max(ours, theirs):.2f} s: without "
          f"pipelining up to {(ours + theirs) / max(ours, theirs):.2f}x")


if __name__ == "__main__":
    main()
