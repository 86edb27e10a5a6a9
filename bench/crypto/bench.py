"""Encryption at rest (issue 17): the same local snapshot sync with encryption off and on.

2,000 files of 100 KB (random bytes) in 20 folders, a filesystem connector in snapshot mode (every
file copied into the local folder store), celery format, a private redis-server. Each round runs
both, in alternating order, each as a whole process after the store and Redis were emptied and
the tree read once (untimed): the only difference between the two is `encryption: {key_file}`.
Prints medians, the ratio (goal: encrypted <= 1.2x the unencrypted time) and peak RSS.

    .venv/bin/python bench/crypto/bench.py [--files 2000] [--size 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import REPO, PrivateRedis, Timing, machine, median, random_tree, retire, run_timed, warm_page_cache


def project(work: Path, name: str, port: int, tree: Path, key_file: Path | None) -> Path:
    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "connectors").mkdir(parents=True)
    encryption = f"encryption: {{key_file: '{key_file}'}}\n" if key_file else ""
    (root / "sync.yaml").write_text(f"redis: {{url: 'redis://127.0.0.1:{port}/0'}}\nstate_dir: ./state\n"
                                    f"log: {{level: warning}}\n{encryption}")
    (root / "connectors" / "bench.yaml").write_text(
        f"type: filesystem\noptions: {{root: '{tree}', snapshot: true}}\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    tree = random_tree(work, "crypto", args.files, args.size)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kmrl_sync")], check=True, capture_output=True)
    key_file = work / "crypto-keys.json"
    key_file.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "kmrl_sync", "keys", "new", str(key_file)], check=True, capture_output=True)
    redis = PrivateRedis(work)
    roots = {"plain": project(work, "crypto-plain", redis.port, tree, None),
             "encrypted": project(work, "crypto-encrypted", redis.port, tree, key_file)}
    results: dict[str, list[Timing]] = {"plain": [], "encrypted": []}
    attic = work / "crypto-retired"  # earlier runs' stores, deleted after the last run (common.retire)
    try:
        for round_no in range(args.rounds):
            order = ["plain", "encrypted"] if round_no % 2 == 0 else ["encrypted", "plain"]
            print(f"round {round_no + 1}/{args.rounds}: {' then '.join(order)}", file=sys.stderr)
            for kind in order:
                redis.flush()
                retire(roots[kind] / "state" / "blobs", attic)
                warm_page_cache(tree)
                run = run_timed([sys.executable, "-m", "kmrl_sync", "sync", "bench",
                                 "-c", str(roots[kind] / "sync.yaml")])
                assert f"created {args.files}," in run.output, run.output
                results[kind].append(run)
        sample = next(p for p in (roots["encrypted"] / "state" / "blobs" / "sha256").rglob("*") if p.is_file())
        assert sample.read_bytes().startswith(b"KMRLENC"), "the encrypted run stored plaintext"
    finally:
        redis.stop()
        shutil.rmtree(attic, ignore_errors=True)
    t = {k: median([r.seconds for r in v]) for k, v in results.items()}
    cpu = {k: median([r.cpu for r in v]) for k, v in results.items()}
    rss = {k: max(r.max_rss_mb for r in v) for k, v in results.items()}
    mb = args.files * args.size / 1e6
    print(f"\nMachine: {machine()}\nFiles: {args.files} x {args.size:,} bytes ({mb:.0f} MB), snapshot mode, "
          f"rounds: {args.rounds} (medians, order alternating)\n")
    print("| run | seconds (median) | fastest | all rounds | MB/s | CPU seconds (median) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("plain", "encrypted"):
        rounds = ", ".join(f"{r.seconds:.2f}" for r in results[kind])
        fastest = min(r.seconds for r in results[kind])
        print(f"| {kind} | {t[kind]:.2f} | {fastest:.2f} | {rounds} | {mb / t[kind]:.0f} | {cpu[kind]:.2f} | "
              f"{rss[kind]:.0f} |")
    ratio = t["encrypted"] / t["plain"]
    per_round = ", ".join(f"{e.seconds / p.seconds:.2f}" for p, e in zip(results["plain"], results["encrypted"],
                                                                         strict=True))
    verdict = "met" if ratio <= 1.2 else "NOT met"
    fastest_ratio = min(r.seconds for r in results["encrypted"]) / min(r.seconds for r in results["plain"])
    print(f"\nencrypted / plain: **{ratio:.2f}x** wall time (per round: {per_round}); goal <= 1.2x: {verdict}; "
          f"fastest rounds {fastest_ratio:.2f}x; "
          f"CPU time {cpu['encrypted'] / cpu['plain']:.2f}x")


if __name__ == "__main__":
    main()
