"""Local, real-HTTP fake of Microsoft Graph (SharePoint driveItem delta) for tests.

Public API (see ``graph/app.py`` and ``graph/store.py`` for details)::

    with FakeGraph(tenant_id="t", client_id="c", client_secret="s") as g:
        site = g.add_site(hostname="kmrl.sharepoint.com", path="/sites/Engineering")
        drive = site.add_drive(name="Documents", web_url_name="Shared Documents")
        drive.put_file("/Plans/Budget.xlsx", b"...")
        ...  # point the connector at g.graph_url / g.authority_url

CLI (manual testing and benchmarks)::

    python -m tests.support.graph_server --files 50000 --folders 2000 --size 10240
"""

from __future__ import annotations

import argparse
import sys
import time

from .graph.app import FakeGraph, RecordedRequest
from .graph.content import BytesContent, Content, GeneratedContent
from .graph.quickxor import QuickXorHash, quickxor_b64
from .graph.store import Drive, Item, Site

__all__ = [
    "BytesContent",
    "Content",
    "Drive",
    "FakeGraph",
    "GeneratedContent",
    "Item",
    "QuickXorHash",
    "RecordedRequest",
    "Site",
    "quickxor_b64",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--folders", type=int, default=50)
    parser.add_argument("--size", type=int, default=10240, help="bytes per generated file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="Graph/authority port (0 = free port)")
    parser.add_argument("--download-port", type=int, default=0)
    parser.add_argument("--tenant-id", default="11111111-2222-3333-4444-555555555555")
    parser.add_argument("--client-id", default="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    parser.add_argument("--client-secret", default="fake-secret")
    parser.add_argument("--hostname", default="kmrl.sharepoint.com")
    parser.add_argument("--site-path", default="/sites/Engineering")
    args = parser.parse_args(argv)

    g = FakeGraph(
        args.tenant_id,
        args.client_id,
        args.client_secret,
        seed=args.seed,
        graph_port=args.port,
        download_port=args.download_port,
    )
    site = g.add_site(hostname=args.hostname, path=args.site_path)
    drive = site.add_drive(name="Documents", web_url_name="Shared Documents")
    started = time.perf_counter()
    drive.bulk_populate(n_files=args.files, n_folders=args.folders, size=args.size, seed=args.seed)
    built = time.perf_counter() - started
    with g:
        print(f"graph_url      {g.graph_url}")
        print(f"authority_url  {g.authority_url}")
        print(f"token_url      {g.token_url}")
        print(f"download       {g.download_origin}")
        print(f"tenant_id      {g.tenant_id}")
        print(f"client_id      {g.client_id}")
        print(f"client_secret  {g.client_secret}")
        print(f"site_id        {site.id}")
        print(f"drive_id       {drive.id}")
        print(f"delta          {g.delta_url(drive)}")
        print(f"items          {len(drive.items)} ({args.files} files, {args.folders} folders)")
        print(f"built in       {built:.2f}s")
        print("serving; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
