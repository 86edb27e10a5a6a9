"""SharePoint connector benchmark against the local Graph server (see README.md here).

    .venv/bin/python bench/sharepoint/bench.py --files 50000 --folders 2000 --size 10240

Starts a private redis-server and the fake Graph (`python -m tests.support.graph_server`) in
their own processes, then runs one full sync per mode in a fresh child process (so peak RSS is the
sync's alone): metadata-only (`download_content: false`) and with content. Prints items/s,
requests made by the connector vs pages + downloads, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def child(config: str, name: str) -> None:
    from kmrl_sync.config import load_config
    from kmrl_sync.runner import Engine

    engine = Engine(load_config(config))
    made = []
    original = engine.make_connector

    def spy(cfg, state, should_stop):
        connector = original(cfg, state, should_stop)
        made.append(connector)
        return connector

    engine.make_connector = spy
    started = time.perf_counter()
    summary = engine.run(name)
    seconds = time.perf_counter() - started
    stats = dict(made[0].http.stats) if made and made[0]._http is not None else {}
    print(json.dumps({"seconds": seconds, "created": summary.created, "failed": summary.failed,
                      "result": summary.result, "error": summary.error, "stats": stats,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--folders", type=int, default=2_000)
    ap.add_argument("--size", type=int, default=10_240)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modes", default="metadata,content")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "NAME"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="kmrl-bench-sp-"))
    redis = RedisServer(work / "redis").start()
    server = subprocess.Popen([sys.executable, "-m", "tests.support.graph_server", "--files", str(args.files),
                               "--folders", str(args.folders), "--size", str(args.size)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        info = {}
        assert server.stdout is not None
        for line in server.stdout:
            if line.startswith("serving"):
                break
            key, _, value = line.partition(" ")
            info[key] = value.strip()
        (work / "connectors").mkdir()
        (work / "sync.yaml").write_text(f'redis: {{url: "{redis.url}", key_prefix: kmrl}}\nstate_dir: ./state\n'
                                        "connectors_dir: connectors\nlog: {level: warning, format: json}\n")
        pages = math.ceil((args.files + args.folders + 1) / args.page_size)
        for mode in args.modes.split(","):
            name = f"sp-{mode}"
            (work / "connectors" / f"{name}.yaml").write_text(
                f"type: sharepoint\nschedule: {{every: 10m}}\ndepartment: bench\noptions:\n"
                f"  tenant_id: {info['tenant_id']}\n  client_id: {info['client_id']}\n"
                f"  client_secret: {info['client_secret']}\n  site_url: https://kmrl.sharepoint.com/sites/Engineering\n"
                f"  library: Shared Documents\n  graph_url: {info['graph_url']}\n"
                f"  authority_url: {info['authority_url']}\n  page_size: {args.page_size}\n"
                f"  download_concurrency: {args.concurrency}\n"
                f"  download_content: {'false' if mode == 'metadata' else 'true'}\n")
            out = subprocess.run([sys.executable, __file__, "--child", str(work / "sync.yaml"), name],
                                 cwd=work, capture_output=True, text=True)
            try:
                r = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print(out.stdout, out.stderr)
                raise
            downloads = args.files if mode == "content" else 0
            made = r["stats"].get("graph", 0) + r["stats"].get("download", 0)
            print(f"{mode:9s} files={args.files} folders={args.folders} size={args.size if downloads else 0} "
                  f"created={r['created']} result={r['result']} seconds={r['seconds']:.1f} "
                  f"items/s={(args.files + args.folders) / r['seconds']:.0f} "
                  f"requests={made} (pages {pages} + downloads {downloads} = {pages + downloads}; "
                  f"graph {r['stats'].get('graph')}, download host {r['stats'].get('download')}, "
                  f"throttled {r['stats'].get('throttled')}) peak_rss={r['peak_rss_mb']:.0f}MB", flush=True)
    finally:
        server.terminate()
        server.wait()
        redis.stop()


if __name__ == "__main__":
    main()
