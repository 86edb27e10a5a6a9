"""Memory stays flat as the source grows (issue 19), checked cheaply with tracemalloc.

Each test runs the same sync in this process at two volumes, against real servers (the Graph test
server in its own process, a real redis-server, Dovecot, a real folder tree), and compares the peak
of traced memory during each run. A connector that keeps something per item (a page body, a cache
entry, an id) shows it as a difference that grows with the volume; one that keeps a bounded window
shows none. Not timed: only bytes are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20


def traced_peak(project, name: str) -> dict:
    """Bytes allocated at the peak of one sync (above what the process held when it began), in a
    fresh process (tests/support/traced_run.py), with its summary."""
    result = subprocess.run([sys.executable, "-m", "tests.support.traced_run", str(project.config), name],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def shown(runs: dict) -> dict:
    return {k: f"{r['peak'] / MB:.2f} MB" for k, r in runs.items()}


# --------------------------------------------------------------------------- SharePoint


class GraphProcess:
    """`python -m tests.support.graph_server` with a generated library, in its own process (so
    that its own allocations are not traced with ours)."""

    def __init__(self, files: int, folders: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.graph_server", "--files", str(files), "--folders", str(folders),
             "--size", "64"], cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.info: dict[str, str] = {}
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("serving"):
                break
            key, _, value = line.partition(" ")
            self.info[key] = value.strip()
        assert "graph_url" in self.info, "the Graph test server did not start"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def graph_library() -> Iterator[Callable[[int, int], GraphProcess]]:
    started: list[GraphProcess] = []

    def start(files: int, folders: int) -> GraphProcess:
        started.append(GraphProcess(files, folders))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def sharepoint_connector(project, name: str, graph: GraphProcess, download: bool) -> None:
    i = graph.info
    project.connector(name, f"""\
type: sharepoint
schedule: {{every: 10m}}
department: engineering
options:
  tenant_id: {i['tenant_id']}
  client_id: {i['client_id']}
  client_secret: {i['client_secret']}
  site_url: https://kmrl.sharepoint.com/sites/Engineering
  library: Shared Documents
  graph_url: {i['graph_url']}
  authority_url: {i['authority_url']}
  page_size: 200
  download_content: {'true' if download else 'false'}
""")


def test_a_sharepoint_delta_enumeration_keeps_nothing_per_item(project, graph_library, redis_client) -> None:
    """20,000 items peak within 2 MB of 5,000 (pages of 200, the connector's default). Before the
    fix every page body stayed until the collector ran: 10.4 MB and 29.0 MB; now 4.8 and 5.5 MB
    (httpx's responses, a few KB a page, still wait for the collector)."""
    runs = {}
    for files in (5_000, 20_000):
        sharepoint_connector(project, f"sp{files}", graph_library(files, files // 100), download=False)
        runs[files] = traced_peak(project, f"sp{files}")
        assert (runs[files]["result"], runs[files]["created"]) == ("ok", files), runs[files]
    assert runs[20_000]["peak"] - runs[5_000]["peak"] < 2 * MB, shown(runs)


def test_sharepoint_downloads_keep_nothing_per_file(project, graph_library, redis_client) -> None:
    """The download path too (download threads, blob store): 4,000 files peak within 1 MB of
    1,000. Before: 6.5 MB and 10.1 MB (page bodies, and a Path made per blob); now 5.3 and 5.5 MB."""
    runs = {}
    for files in (1_000, 4_000):
        sharepoint_connector(project, f"dl{files}", graph_library(files, 20), download=True)
        runs[files] = traced_peak(project, f"dl{files}")
        assert (runs[files]["result"], runs[files]["created"]) == ("ok", files), runs[files]
    assert runs[4_000]["peak"] - runs[1_000]["peak"] < 1 * MB, shown(runs)


# --------------------------------------------------------------------------- filesystem


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i % 10}" / f"f{i // 100}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"doc{i}.txt").write_bytes(b"%d\n" % i)


def test_a_filesystem_walk_keeps_nothing_per_file(project, tmp_path, redis_client) -> None:
    """A first sync and a no-change rescan of 20,000 files peak within 1 MB of 5,000: the walk
    holds a folder's listing and the known-id join a page of ids, never the tree."""
    runs = {}
    for files in (5_000, 20_000):
        root = tmp_path / f"tree{files}"
        make_tree(root, files)
        project.filesystem(f"fs{files}", root)
        runs[f"initial {files}"] = traced_peak(project, f"fs{files}")
        assert runs[f"initial {files}"]["created"] == files, runs
        runs[f"rescan {files}"] = traced_peak(project, f"fs{files}")
        assert runs[f"rescan {files}"]["unchanged"] == files, runs
    assert runs["initial 20000"]["peak"] - runs["initial 5000"]["peak"] < 1 * MB, shown(runs)
    assert runs["rescan 20000"]["peak"] - runs["rescan 5000"]["peak"] < 1 * MB, shown(runs)


# --------------------------------------------------------------------------- IMAP


def deliver(box, first: int, count: int) -> None:
    """`count` small mails straight into the INBOX Maildir, as a delivery agent writes them
    (APPEND takes ~10 ms a mail here); Dovecot indexes them at the next SELECT."""
    with box.client() as c:  # creates the Maildir on a first login
        c.select_folder("INBOX")
    new = box.maildir() / "new"
    owner = new.stat()
    for i in range(first, first + count):
        path = new / f"{1_700_000_000 + i}.M{i}P1.kmrl-test"
        path.write_bytes(b"From: a@example.org\r\nTo: b@example.org\r\nSubject: mail %d\r\n"
                         b"Message-ID: <m%d@example.org>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\n"
                         b"body %d\r\n" % (i, i, i))
        if owner.st_uid != os.geteuid():
            os.chown(path, owner.st_uid, owner.st_gid)
    with box.client() as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == first + count


def test_an_imap_first_sync_keeps_nothing_per_mail(project, dovecot_mailbox, redis_client) -> None:
    """A first sync of 16,000 mails peaks within 3 MB of 4,000. Before, the aux read cache kept
    every location, message id and UID it wrote, up to 50,000 fields: 7.4 MB and 13.6 MB. What is
    left (about 1.4 MB) is the folder's list of new UIDs, which SEARCH returns whole: 36 bytes a
    mail, and its parse."""
    from tests.integration.imap_helpers import write_connector

    runs = {}
    delivered = 0
    for mails in (4_000, 16_000):
        deliver(dovecot_mailbox, delivered, mails - delivered)
        delivered = mails
        write_connector(project, f"imap{mails}", dovecot_mailbox, folders="[INBOX]")
        runs[mails] = traced_peak(project, f"imap{mails}")  # a first sync: its own connector
        assert (runs[mails]["result"], runs[mails]["created"]) == ("ok", mails), runs[mails]
    assert runs[16_000]["peak"] - runs[4_000]["peak"] < 3 * MB, shown(runs)
