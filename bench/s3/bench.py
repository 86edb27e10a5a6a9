"""S3 content store benchmark (issue 17): a folder snapshot of 2,000 x 100 KB files into S3.

Against one moto S3 server (its own process, on loopback), interleaved in rounds, each run a whole
process: kmrl-sync's snapshot sync into a fresh prefix, and a bare boto3 uploader (bare_upload.py:
read, hash, put_object on the same number of threads, nothing else) putting the same objects into
another fresh prefix. Prints medians, the throughput ratio (goal >= 0.9x the bare uploader), peak
RSS of the sync (goal <= 150 MB) and the load average around each round (the machine is shared).

    .venv/bin/python bench/s3/bench.py [--files 2000] [--size 102400] [--rounds 5] [--big-mb 256]

`--big-mb N` then syncs one N MB file (spooled, multipart) and reports the sync's peak RSS: memory
must not grow with the size of a file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import REPO, PrivateRedis, free_port, machine, median, random_tree, run_timed

from kmrl_sync.content.s3 import UPLOAD_THREADS

HERE = Path(__file__).resolve().parent


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret")
    for _ in range(200):
        try:
            client.list_buckets()
            break
        except Exception:
            time.sleep(0.05)
    client.create_bucket(Bucket="bench")
    return proc, endpoint


def empty_prefix(endpoint: str, prefix: str) -> None:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
        if keys:
            client.delete_objects(Bucket="bench", Delete={"Objects": keys})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100 * 1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    tree = random_tree(work, "s3", args.files, args.size)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kmrl_sync")], check=True, capture_output=True)
    redis = PrivateRedis(work)
    moto, endpoint = start_moto(work)
    project = work / "s3-project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "connectors").mkdir(parents=True)
    (project / "access").write_text("bench\n")
    (project / "secret").write_text("bench-secret\n")
    (project / "connectors" / "bench.yaml").write_text(
        f"type: filesystem\noptions: {{root: '{tree}', snapshot: true}}\n")
    def write_config(prefix: str) -> None:
        (project / "sync.yaml").write_text(
            f"redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\nstate_dir: ./state\n"
            f"log: {{level: warning}}\nblobs:\n  url: s3://bench/{prefix}\n  endpoint_url: {endpoint}\n"
            f"  region: us-east-1\n  access_key_file: access\n  secret_key_file: secret\n")

    py = sys.executable
    kmrl = [py, "-m", "kmrl_sync", "sync", "bench", "-c", str(project / "sync.yaml")]
    results: dict[str, list] = {"ours": [], "bare": []}
    loads: list[tuple[float, float]] = []
    try:
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds}", file=sys.stderr)
            before = os.getloadavg()[0]
            order = ("ours", "bare") if round_no % 2 == 0 else ("bare", "ours")
            for which in order:
                prefix = f"{which}{round_no}"
                if which == "ours":
                    redis.flush()
                    write_config(prefix)
                    run = run_timed(kmrl, cwd=project)
                    assert f"created {args.files}," in run.output, run.output
                else:
                    run = run_timed([py, str(HERE / "bare_upload.py"), str(tree), endpoint, "bench", prefix,
                                     str(UPLOAD_THREADS)])
                results[which].append(run)
                empty_prefix(endpoint, prefix)  # untimed: keeps moto's memory (and speed) the same every round
            loads.append((before, os.getloadavg()[0]))
        big = None
        if args.big_mb:
            big_tree = work / f"s3-big-{args.big_mb}"
            if not big_tree.exists():
                big_tree.mkdir()
                with open(big_tree / "big.bin", "wb") as f:
                    for _ in range(args.big_mb):
                        f.write(os.urandom(1 << 20))
            (project / "connectors" / "bench.yaml").write_text(
                f"type: filesystem\noptions: {{root: '{big_tree}', snapshot: true}}\n")
            redis.flush()
            write_config("big")
            big = run_timed(kmrl, cwd=project)
            assert "created 1," in big.output, big.output
            empty_prefix(endpoint, "big")
    finally:
        moto.terminate()
        moto.wait()
        redis.stop()
    print(f"\nMachine: {machine()}")
    if big is not None:
        print(f"One {args.big_mb} MB file (spooled, multipart): {big.seconds:.1f} s, "
              f"{args.big_mb / big.seconds:.1f} MB/s, peak RSS {big.max_rss_mb:.0f} MB")
    if not args.rounds:
        return
    t = {k: median([r.seconds for r in v]) for k, v in results.items()}
    rss = {k: max(r.max_rss_mb for r in v) for k, v in results.items()}
    mb = args.files * args.size / 2**20
    ratio = t["bare"] / t["ours"]
    print(f"Files: {args.files} x {args.size // 1024} KB, rounds: {args.rounds} (medians), "
          f"moto S3 server on loopback, {UPLOAD_THREADS} uploads in flight for both")
    print("Load average (1 min) before/after each round: " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in loads) + "\n")
    print("| run | seconds (each round) | median | MB/s | files/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for key, label in (("bare", "bare boto3 uploader"), ("ours", "**kmrl-sync snapshot sync into S3**")):
        each = ", ".join(f"{r.seconds:.2f}" for r in results[key])
        print(f"| {label} | {each} | {t[key]:.2f} | {mb / t[key]:.1f} | {args.files / t[key]:,.0f} | {rss[key]:.0f} |")
    print(f"\nThroughput: {ratio:.2f}x the bare uploader (goal >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'}); "
          f"peak RSS {rss['ours']:.0f} MB (goal <= 150 MB: {'met' if rss['ours'] <= 150 else 'NOT met'})")



if __name__ == "__main__":
    main()
