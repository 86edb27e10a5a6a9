"""`blobs gc`'s peak memory as the corpus grows: it should stay flat (references and the store's
listing are spilled to bucket files, checked one bucket at a time; engine/retention.py).

    .venv/bin/python bench/gc/memory.py 100000 1000000

For each size N: a private redis-server on a free loopback port holding N live document hashes
(blob, sha256, status, as a sync writes them; every 10th one's object also exists in a folder
store) and N/10 unreferenced objects; then `kmrl-sync blobs gc --dry-run --grace 0s --json` runs as its own
process and its peak RSS (wait4's rusage of that process alone) is reported beside its seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kmrl_sync.engine.keys import doc_key  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402


def fill(client, store: Path, n: int) -> None:
    uri_base = store.resolve().as_uri() + "/sha256"
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        pipe.hset(doc_key("kmrl", f"bench:doc-{i}"), mapping={
            "blob": f"{uri_base}/{digest[:2]}/{digest}", "sha256": digest, "status": "created", "size": "1"})
        if i % 10 == 0:
            folder = store / "sha256" / digest[:2]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / digest).write_bytes(b"x")
            orphan = hashlib.sha256(f"orphan {i}".encode()).hexdigest()
            (store / "sha256" / orphan[:2]).mkdir(parents=True, exist_ok=True)
            (store / "sha256" / orphan[:2] / orphan).write_bytes(b"y")
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()


def main(sizes: list[int]) -> None:
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="kmrl-gc-bench-") as tmp:
            base = Path(tmp)
            server = RedisServer(base / "redis").start()
            try:
                client = server.client()
                fill(client, base / "blobs", n)
                (base / "sync.yaml").write_text(f'redis: {{url: "{server.url}"}}\nblobs: {{path: {base / "blobs"}}}\n'
                                                "log: {level: warning, format: json}\n")
                started = time.monotonic()
                with open(base / "report.json", "w") as out:
                    proc = subprocess.Popen([sys.executable, "-m", "kmrl_sync", "blobs", "gc", "--dry-run", "--grace",
                                             "0s", "--json", "-c", str(base / "sync.yaml")], stdout=out)
                    _pid, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not redis-server's
                    proc.returncode = os.waitstatus_to_exitcode(status)
                seconds = time.monotonic() - started
                assert proc.returncode == 0, proc.returncode
                report = json.loads((base / "report.json").read_text())
                print(f"{n:>9,} documents, {report['objects']:>7,} objects: peak RSS {usage.ru_maxrss / 1024:.0f} MB, "
                      f"{seconds:.1f} s, would delete {report['deleted']:,}", flush=True)
            finally:
                server.stop()


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [100_000, 1_000_000])
