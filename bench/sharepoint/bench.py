"""SharePoint connector benchmark against the local Graph server (see README.md here).

    .venv/bin/python bench/sharepoint/bench.py --files 50000 --folders 2000 --size 10240 --repeat 2 [--scale 3]

Starts a private redis-server and the fake Graph (`python -m tests.support.graph_server`) in
their own processes, then runs each case in a fresh child process (so peak RSS is that run's
alone), `--repeat` times, interleaved (metadata, content, bare-metadata, bare-content, metadata,
...), with Redis flushed and an empty blob store for every run (the previous run's is set aside by
a rename and deleted with the rest at the end: ext4 skips, one by one, the inodes freed within the
last minute when it allocates new ones, so deleting 20,000 blobs right before a run put 5-6 s of
system time (`recently_deleted` in perf) into that run's file creations, a cost no sync pays that
has not just deleted its store):

- `metadata` / `content`: one full first sync by the real Engine (`download_content` false/true).
- `bare-metadata` / `bare-content`: the protocol floor. A bare httpx client with the same
  concurrency, the same `$select`/`$top` and the same server process: token, every delta page,
  and (content) a GET of every file's `@microsoft.graph.downloadUrl` with the body read and
  dropped. No Redis, no blob store, no hashing, no engine. Structured like the connector (a page,
  then its downloads in parallel), so ours/bare is the cost of what we do beyond the protocol.
- `bare-stdlib`: bare-content with one keep-alive `http.client` connection per download thread
  instead of httpx (the cheapest Python client we know; a reference, not a goal).

Prints one line per run, then medians per case and the ratio ours/bare (seconds).
`--scale K`: afterwards one `content` run on a library K times as large (files and folders, same
options), and the peak RSS of both volumes (issue 19: memory must not grow with the library).
`--py-spy DIR` records each of our runs with `py-spy record -f raw --gil` (samples the thread
holding the GIL: where the CPU of this GIL-bound process goes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import retire  # noqa: E402

CASES = ("metadata", "content", "bare-metadata", "bare-content", "bare-stdlib")


def usage() -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_rss_mb": ru.ru_maxrss / 1024, "cpu": ru.ru_utime + ru.ru_stime, "sys": ru.ru_stime}


def child(config: str, name: str) -> None:
    """Our run: the real Engine, one full sync; prints a JSON summary line."""
    from kmrl_sync.engine.runner import Engine
    from kmrl_sync.loading.loader import load_config

    engine = Engine(load_config(config))
    made = []
    original = engine.make_connector

    def spy(*args, **kwargs):
        connector = original(*args, **kwargs)
        made.append(connector)
        return connector

    engine.make_connector = spy
    spent = {"blob_put": 0.0, "blob_flush": 0.0}  # wall seconds inside the content store (puts summed over threads)

    def timed(what: str, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[what] += time.perf_counter() - t0  # += on a float: a lost update only blurs a figure
        return wrapper

    engine.blobs.put_chunks = timed("blob_put", engine.blobs.put_chunks)
    engine.blobs.flush = timed("blob_flush", engine.blobs.flush)
    started = time.perf_counter()
    summary = engine.run(name)
    seconds = time.perf_counter() - started
    stats = dict(made[0].http.stats) if made and made[0]._http is not None else {}
    stats.update(spent)
    print(json.dumps({"seconds": seconds, "created": summary.created, "failed": summary.failed,
                      "result": summary.result, "error": summary.error, "stats": stats,
                      **usage()}))


def bare_child(spec: str) -> None:
    """The protocol floor: token, delta pages, one GET per downloadUrl; nothing stored."""
    import httpx

    from kmrl_sync.connectors.sharepoint.delta import DOWNLOAD_URL, initial_url

    s = json.loads(spec)
    limits = httpx.Limits(max_connections=s["concurrency"] + 2, max_keepalive_connections=s["concurrency"] + 2)
    graph = httpx.Client(limits=limits, timeout=60.0)
    dl = httpx.Client(limits=limits, timeout=60.0)
    pool = ThreadPoolExecutor(s["concurrency"])
    started = time.perf_counter()
    token = graph.post(s["token_url"], data={
        "grant_type": "client_credentials", "client_id": s["client_id"], "client_secret": s["client_secret"],
        "scope": "https://graph.microsoft.com/.default"}).raise_for_status().json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    local = threading.local()

    def fetch(url: str) -> int:
        if s["stdlib"]:
            p = urlsplit(url)
            conn = getattr(local, "conn", None) or http.client.HTTPConnection(p.hostname, p.port, timeout=60)
            local.conn = conn
            conn.request("GET", f"{p.path}?{p.query}")
            r = conn.getresponse()
            status, size = r.status, len(r.read())
        else:
            resp = dl.get(url)
            status, size = resp.status_code, len(resp.content)
        if status != 200:
            raise RuntimeError(f"download answered {status}")
        return size

    link: str | None = initial_url(s["graph_url"], s["drive_id"], s["page_size"])
    pages = downloads = size = items = 0
    while link:
        body = graph.get(link, headers=auth).raise_for_status().json()
        pages += 1
        items += len(body["value"])
        urls = [v[DOWNLOAD_URL] for v in body["value"] if "file" in v and DOWNLOAD_URL in v]
        if s["content"] and urls:
            got = list(pool.map(fetch, urls))
            downloads += len(got)
            size += sum(got)
        link = body.get("@odata.nextLink")
    seconds = time.perf_counter() - started
    pool.shutdown()
    print(json.dumps({"seconds": seconds, "created": items, "failed": 0, "result": "ok", "error": None,
                      "stats": {"graph": pages, "download": downloads, "throttled": 0, "bytes": size},
                      **usage()}))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (Linux /proc), to split CPU between client and server."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(argv: list[str], cwd: Path, py_spy: Path | None) -> dict:
    cmd = [sys.executable, __file__, *argv]
    if py_spy is not None:
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [str(spy), "record", "-f", "raw", "-r", "100", "--gil", "--threads", "-o", str(py_spy), "--", *cmd]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    try:
        return json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    except (IndexError, ValueError):
        print(out.stdout, out.stderr)
        raise


def start_graph(files: int, folders: int, size: int) -> tuple[subprocess.Popen, dict[str, str]]:
    """The fake Graph in its own process, with a generated library; (process, what it printed)."""
    server = subprocess.Popen([sys.executable, "-m", "tests.support.graph_server", "--files", str(files),
                               "--folders", str(folders), "--size", str(size)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    info = {}
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("serving"):
            break
        key, _, value = line.partition(" ")
        info[key] = value.strip()
    return server, info


def warm_up(info: dict[str, str], args: argparse.Namespace, work: Path) -> None:
    """Not measured: the fake computes each file's quickXorHash on first listing and caches it;
    without this the first run of the series would pay that server CPU alone."""
    warm = {"graph_url": info["graph_url"], "token_url": info["token_url"], "client_id": info["client_id"],
            "client_secret": info["client_secret"], "drive_id": info["drive_id"],
            "page_size": args.page_size, "concurrency": args.concurrency, "content": False, "stdlib": False}
    run_child(["--bare-child", json.dumps(warm)], work, None)


def write_connector(work: Path, name: str, info: dict[str, str], args: argparse.Namespace, download: bool) -> None:
    (work / "connectors" / f"{name}.yaml").write_text(
        f"type: sharepoint\nschedule: {{every: 10m}}\ndepartment: bench\noptions:\n"
        f"  tenant_id: {info['tenant_id']}\n  client_id: {info['client_id']}\n"
        f"  client_secret: {info['client_secret']}\n  site_url: https://kmrl.sharepoint.com/sites/Engineering\n"
        f"  library: Shared Documents\n  graph_url: {info['graph_url']}\n"
        f"  authority_url: {info['authority_url']}\n  page_size: {args.page_size}\n"
        f"  download_concurrency: {args.concurrency}\n"
        f"  download_content: {'true' if download else 'false'}\n")


def scale_run(args: argparse.Namespace, work: Path, redis: Any, small: list[dict]) -> None:
    """The content case again on a library `--scale` times as large (files and folders), after the
    others: peak RSS must not grow with the library (issue 19: <= 150 MB, within 10 %)."""
    files, folders = args.files * args.scale, args.folders * args.scale
    server, info = start_graph(files, folders, args.size)
    try:
        warm_up(info, args, work)
        write_connector(work, "sp-scale", info, args, download=True)
        redis.client().flushall()
        retire(work / "state", work / "retired")
        big = run_child(["--child", str(work / "sync.yaml"), "sp-scale"], work, None)
    finally:
        server.terminate()
        server.wait()
    assert big["created"] == files and big["result"] == "ok", big
    rss_small = max(r["peak_rss_mb"] for r in small)
    rss_big = big["peak_rss_mb"]
    growth = rss_big / rss_small - 1
    per_s_small = (args.files + args.folders) / statistics.median(r["seconds"] for r in small)
    per_s_big = (files + folders) / big["seconds"]
    print(f"scale run (content, same options), {args.scale}x the library:", flush=True)
    print(f"  {args.files:>9,} files, {args.folders:>6,} folders: peak_rss={rss_small:.0f}MB (max of {len(small)}) "
          f"items/s={per_s_small:.0f}", flush=True)
    print(f"  {files:>9,} files, {folders:>6,} folders: peak_rss={rss_big:.0f}MB seconds={big['seconds']:.1f} "
          f"items/s={per_s_big:.0f} cpu: client {big['cpu']:.1f}s (sys {big['sys']:.1f}s)", flush=True)
    print(f"  larger/smaller peak RSS: {growth:+.1%} (goal within 10 %: {'met' if growth <= 0.10 else 'NOT met'}); "
          f"larger <= 150 MB: {'met' if rss_big <= 150 else 'NOT met'}; "
          f"items/s with downloads >= 1,000: {'met' if min(per_s_small, per_s_big) >= 1000 else 'NOT met'}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--folders", type=int, default=2_000)
    ap.add_argument("--size", type=int, default=10_240)
    ap.add_argument("--page-size", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modes", default=",".join(CASES), help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case, interleaved; medians reported")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", help="py-spy raw profile of each of our runs")
    ap.add_argument("--scale", type=int, default=0, metavar="K",
                    help="then one content run on a library K times as large (files and folders): peak RSS")
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "NAME"))
    ap.add_argument("--bare-child", metavar="JSON")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.bare_child:
        bare_child(args.bare_child)
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(CASES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")
    from tests.support.redis_server import RedisServer

    work = Path(tempfile.mkdtemp(prefix="kmrl-bench-sp-"))
    redis = RedisServer(work / "redis").start()
    server, info = start_graph(args.files, args.folders, args.size)
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        (work / "connectors").mkdir()
        (work / "sync.yaml").write_text(f'redis: {{url: "{redis.url}", key_prefix: kmrl}}\nstate_dir: ./state\n'
                                        "connectors_dir: connectors\nlog: {level: warning, format: json}\n")
        pages = math.ceil((args.files + args.folders + 1) / args.page_size)
        warm_up(info, args, work)
        for mode in ("metadata", "content"):
            write_connector(work, f"sp-{mode}", info, args, download=mode == "content")
        for rep in range(args.repeat):
            for mode in modes:
                redis.client().flushall()
                retire(work / "state", work / "retired")
                spy = args.py_spy / f"{mode}-{rep + 1}.txt" if args.py_spy and not mode.startswith("bare") else None
                server_cpu = cpu_seconds(server.pid)
                if mode.startswith("bare"):
                    spec = {"graph_url": info["graph_url"], "token_url": info["token_url"],
                            "client_id": info["client_id"], "client_secret": info["client_secret"],
                            "drive_id": info["drive_id"], "page_size": args.page_size,
                            "concurrency": args.concurrency, "content": mode != "bare-metadata",
                            "stdlib": mode == "bare-stdlib"}
                    r = run_child(["--bare-child", json.dumps(spec)], work, None)
                else:
                    r = run_child(["--child", str(work / "sync.yaml"), f"sp-{mode}"], work, spy)
                r["server_cpu"] = cpu_seconds(server.pid) - server_cpu
                results[mode].append(r)
                downloads = args.files if mode in ("content", "bare-content", "bare-stdlib") else 0
                made = r["stats"].get("graph", 0) + r["stats"].get("download", 0)
                print(f"run {rep + 1} {mode:13s} files={args.files} folders={args.folders} "
                      f"size={args.size if downloads else 0} created={r['created']} result={r['result']} "
                      f"seconds={r['seconds']:.1f} items/s={(args.files + args.folders) / r['seconds']:.0f} "
                      f"requests={made} (pages {pages} + downloads {downloads} = {pages + downloads}; "
                      f"graph {r['stats'].get('graph')}, download host {r['stats'].get('download')}, "
                      f"throttled {r['stats'].get('throttled')}) peak_rss={r['peak_rss_mb']:.0f}MB "
                      f"cpu: client {r['cpu']:.1f}s (sys {r['sys']:.1f}s) server {r['server_cpu']:.1f}s"
                      + (f" blob store: puts {r['stats']['blob_put']:.1f}s (summed over threads), "
                         f"flushes {r['stats']['blob_flush']:.1f}s" if "blob_put" in r["stats"] else ""),
                      flush=True)
        print(f"medians of {args.repeat} run(s):")
        med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in results.items() if rs}
        for mode, seconds in med.items():
            rs = results[mode]
            rss = max(r["peak_rss_mb"] for r in rs)
            print(f"  {mode:13s} seconds={seconds:.1f} items/s={(args.files + args.folders) / seconds:.0f} "
                  f"max peak_rss={rss:.0f}MB cpu: client {statistics.median(r['cpu'] for r in rs):.1f}s "
                  f"server {statistics.median(r['server_cpu'] for r in rs):.1f}s", flush=True)
        for ours, bare in (("metadata", "bare-metadata"), ("content", "bare-content"), ("content", "bare-stdlib")):
            if ours in med and bare in med:
                print(f"  {ours}/{bare}: {med[ours] / med[bare]:.2f}x", flush=True)
        server.terminate()
        server.wait()
        if args.scale > 1 and results.get("content"):
            scale_run(args, work, redis, results["content"])
    finally:
        server.terminate()
        server.wait()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
