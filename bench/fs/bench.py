"""Filesystem benchmark (issue 2): 100,000 files of 1-16 KB in ~1,000 folders.

Runs, interleaved in one invocation and each as a whole process against a private redis-server:
the seed pattern, the floor (walk + read + sha256 + pipelined push), our initial sync (reference
mode, celery format), a bare walk+stat, and our no-change rescan. Prints a Markdown table with
medians, ratios and peak RSS. The tree is built once with the reference tree maker and cached.

    .venv/bin/python bench/fs/bench.py [--files 100000] [--rounds 3] [--scale 3]

`--scale K` then runs one initial sync and one no-change rescan of a tree K times as large (built
once and kept like the first, 3.1 GB for 300,000 files) and compares their peak RSS with the runs
above (issue 19: memory must not grow with the tree).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import REPO, SHARED_REF, PrivateRedis, Timing, machine, median, run_timed, warm_page_cache

REF = SHARED_REF / "fs"


def make_tree(work: Path, files: int) -> Path:
    """The reference tree of `files` files, built once and kept under `work`."""
    tree = work / f"tree-{files}"
    if not tree.exists():
        print(f"building {tree} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(REF / "make_tree.py"), str(tree) + ".tmp", str(files)], check=True)
        (Path(str(tree) + ".tmp")).rename(tree)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--scale", type=int, default=0, metavar="K",
                        help="then one initial sync and one rescan of a tree K times as large: peak RSS")
    args = parser.parse_args()
    work = args.workdir
    tree = make_tree(work, args.files)
    big_tree = make_tree(work, args.files * args.scale) if args.scale > 1 else None
    # bytecode for our modules, as an installed package has it (see scripts/bootstrap)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kmrl_sync")], check=True, capture_output=True)
    redis = PrivateRedis(work)
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "connectors").mkdir(parents=True)
    (project / "sync.yaml").write_text(
        f"redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\nstate_dir: ./state\nlog: {{level: warning}}\n")
    (project / "connectors" / "bench.yaml").write_text(f"type: filesystem\noptions: {{root: '{tree}'}}\n")
    py = sys.executable
    kmrl = [py, "-m", "kmrl_sync", "sync", "bench", "-c", str(project / "sync.yaml")]
    kmrl_counted = [py, str(REPO / "bench" / "count_round_trips.py"), "sync", "bench", "-c", str(project / "sync.yaml")]
    results: dict[str, list] = {k: [] for k in ("seed", "floor", "initial", "walk", "nochange")}
    try:
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr)
            redis.flush()
            warm_page_cache(tree)
            results["seed"].append(run_timed([py, str(REF / "seed_pattern.py"), str(tree), str(redis.port)]))
            redis.flush()
            warm_page_cache(tree)
            results["floor"].append(run_timed([py, str(REF / "raw_limit.py"), str(tree), str(redis.port)]))
            redis.flush()
            warm_page_cache(tree)
            initial = run_timed(kmrl)
            assert f"created {args.files}," in initial.output, initial.output
            results["initial"].append(initial)
            warm_page_cache(tree)
            results["walk"].append(run_timed([py, str(REF / "walk_only.py"), str(tree)]))
            warm_page_cache(tree)
            nochange = run_timed(kmrl)
            assert "created 0, updated 0, deleted 0" in nochange.output, nochange.output
            results["nochange"].append(nochange)
        counted = run_timed(kmrl_counted).output
        trips = int(counted.rsplit("redis round trips:", 1)[1].split()[0])
        scaled: dict[str, Timing] = {}
        if big_tree is not None:  # issue 19: memory must not grow with the tree
            print(f"scale run: {args.files * args.scale} files", file=sys.stderr)
            (project / "connectors" / "bench.yaml").write_text(f"type: filesystem\noptions: {{root: '{big_tree}'}}\n")
            redis.flush()
            warm_page_cache(big_tree)
            scaled["initial"] = run_timed(kmrl)
            assert f"created {args.files * args.scale}," in scaled["initial"].output, scaled["initial"].output
            warm_page_cache(big_tree)
            scaled["nochange"] = run_timed(kmrl)
            assert "created 0, updated 0, deleted 0" in scaled["nochange"].output, scaled["nochange"].output
    finally:
        redis.stop()
    t = {k: median([r.seconds for r in v]) for k, v in results.items()}
    rss = {k: max(r.max_rss_mb for r in v) for k, v in results.items()}
    print(f"\nMachine: {machine()}\nFiles: {args.files}, rounds: {args.rounds} (medians)\n")
    print("| run | seconds | peak RSS MB | ratio |")
    print("|---|---|---|---|")
    print(f"| seed pattern (initial) | {t['seed']:.2f} | {rss['seed']:.0f} | |")
    print(f"| floor: walk+read+sha256+pipelined push | {t['floor']:.2f} | {rss['floor']:.0f} | |")
    print(f"| **kmrl-sync initial sync** | {t['initial']:.2f} | {rss['initial']:.0f} | "
          f"{t['initial'] / t['floor']:.2f}x the floor, {t['seed'] / t['initial']:.1f}x faster than seed |")
    print(f"| bare walk+stat | {t['walk']:.2f} | {rss['walk']:.0f} | |")
    print(f"| **kmrl-sync no-change rescan** | {t['nochange']:.2f} | {rss['nochange']:.0f} | "
          f"{t['nochange'] / t['walk']:.2f}x the bare walk; {trips} Redis round trips "
          f"({trips / args.files * 1000:.2f} per 1,000 files) |")
    if scaled:
        big = args.files * args.scale
        print(f"\nScale run: {big} files ({args.scale}x), one run each, peak RSS against the runs above (max)\n")
        print("| run | files/s small | files/s large | peak RSS MB small | peak RSS MB large | growth | goal |")
        print("|---|---|---|---|---|---|---|")
        for key, label in (("initial", "initial sync"), ("nochange", "no-change rescan")):
            small, large = rss[key], scaled[key].max_rss_mb
            growth = large / small - 1
            verdict = "met" if growth <= 0.10 and large <= 150 else "NOT met"
            print(f"| {label} | {args.files / t[key]:,.0f} | {big / scaled[key].seconds:,.0f} | {small:.0f} | "
                  f"{large:.0f} | {growth:+.1%} | within 10 %, <= 150 MB: {verdict} |")


if __name__ == "__main__":
    main()
