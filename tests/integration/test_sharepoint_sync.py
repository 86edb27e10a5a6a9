"""SharePoint connector against the local Graph server (real HTTP) and a real Redis, via the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from kmrl_sync.connectors.sharepoint.http import GraphHttp
from kmrl_sync.engine.runner import Engine
from kmrl_sync.loading.loader import load_config
from tests.support.blobs import read_blob
from tests.support.celery_messages import decode_queue
from tests.support.crash import crash_rng, kill_at_random_commits
from tests.support.documents import document
from tests.support.graph_fixtures import CLIENT, SECRET, SITE, TENANT
from tests.support.graph_server import FakeGraph


def configure(project, graph: FakeGraph, extra: str = "", secret: str = SECRET, name: str = "sp") -> None:
    body = (f"type: sharepoint\nschedule: {{every: 10m}}\ndepartment: engineering\noptions:\n"
            f"  tenant_id: {TENANT}\n  client_id: {CLIENT}\n  client_secret: \"{secret}\"\n"
            f"  site_url: {SITE}\n  library: Shared Documents\n  graph_url: {graph.graph_url}\n"
            f"  authority_url: {graph.authority_url}\n  page_size: 3\n")
    project.connector(name, body + "".join(f"  {line}\n" for line in extra.splitlines() if line))


def tasks(redis_client) -> list[tuple[str, str]]:
    return [(t.task, t.document_id) for t in decode_queue(redis_client)]


def doc(redis_client, item_id: str, name: str = "sp") -> dict[str, str]:
    return document(redis_client, f"{name}:{item_id}")


def sync(project, name: str = "sp", expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = project.cli("sync", name)
    assert result.returncode == expect, result.stdout + result.stderr
    return result


def test_initial_sync_scope_metadata_and_content(project, graph, drive, redis_client):
    a = drive.put_file("/Drawings/a.pdf", b"hello world")
    b = drive.put_file("/Drawings/Deep/Er/b.docx", b"docx bytes" * 100)
    drive.put_file("/Drawings/skip.txt", b"not included")
    drive.put_file("/Other/c.pdf", b"outside the folder scope")
    empty = drive.put_file("/Drawings/empty.pdf", b"")
    drive.add_package("/Drawings/Notebook")
    drive.set_enrichment("/Drawings/Deep/Er/b.docx")  # served bytes differ from the reported hash
    graph.duplicate_in_page(2)
    graph.duplicate_across_pages(2)
    graph.truncate_download_once()
    configure(project, graph, 'folder: /Drawings\ninclude: ["**/*.pdf", "**/*.docx"]')
    out = sync(project)
    assert "created 3" in out.stdout
    assert sorted(tasks(redis_client)) == sorted(("process_document", f"sp:{i.id}") for i in (a, b, empty))
    meta = doc(redis_client, a.id)
    assert meta["path"] == "/Drawings/a.pdf" and meta["filename"] == "a.pdf"
    assert meta["size"] == "11" and meta["mime_type"] == "application/pdf"
    assert meta["site_id"] and meta["drive_id"] == drive.id and meta["department"] == "engineering"
    assert meta["web_url"].endswith("/Shared%20Documents/Drawings/a.pdf")
    assert read_blob(meta["blob"]) == b"hello world"
    enriched = doc(redis_client, b.id)
    assert read_blob(enriched["blob"]).startswith(b"docx bytes")
    assert int(enriched["size"]) > 1000  # the bytes served, not the size reported
    # the bearer never went to the download host; nothing leaked into output
    assert not [r for r in graph.requests_to("download") if r.has_authorization]
    assert SECRET not in out.stdout + out.stderr and "tempauth" not in out.stdout + out.stderr
    again = sync(project)
    assert "created 0, updated 0, deleted 0" in again.stdout


def test_incremental_adds_edits_renames_deletes(project, graph, drive, redis_client):
    keep = drive.put_file("/Plans/Sub/keep.pdf", b"keep")
    edit = drive.put_file("/Plans/edit.pdf", b"v1")
    gone = drive.put_file("/Plans/gone.pdf", b"bye")
    deep = drive.put_file("/Old/Inner/deep.pdf", b"deep")
    out_of_scope = drive.put_file("/Plans/Sub/leaves.pdf", b"leaves")
    configure(project, graph, 'exclude: ["Archive/**"]')
    sync(project)
    assert len(tasks(redis_client)) == 5
    redis_client.delete("document_processing")

    added = drive.put_file("/Plans/new.pdf", b"new")
    drive.put_file("/Plans/edit.pdf", b"v2 content")
    drive.rename("/Plans", "Projects")  # keep.pdf and edit.pdf get new paths, not re-sent by Graph
    drive.delete("/Projects/gone.pdf")
    drive.delete("/Old")  # folder tombstone only: deep.pdf must be deleted with it
    drive.move("/Projects/Sub/leaves.pdf", "/", None)
    drive.create_folder("/Archive")
    drive.move("/leaves.pdf", "/Archive")  # moved into an excluded folder: deleted from the hub
    drive.resend_unchanged("/Projects/Sub/keep.pdf")
    graph.clear_requests()
    out = sync(project)
    got = Counter(tasks(redis_client))
    assert got == Counter({("process_document", f"sp:{added.id}"): 1, ("process_document", f"sp:{edit.id}"): 1,
                           ("process_document", f"sp:{keep.id}"): 1, ("delete_document", f"sp:{gone.id}"): 1,
                           ("delete_document", f"sp:{deep.id}"): 1,
                           ("delete_document", f"sp:{out_of_scope.id}"): 1}), out.stdout
    assert doc(redis_client, keep.id)["path"] == "/Projects/Sub/keep.pdf"
    assert doc(redis_client, edit.id)["path"] == "/Projects/edit.pdf"
    assert read_blob(doc(redis_client, edit.id)["blob"]) == b"v2 content"
    assert doc(redis_client, deep.id)["status"] == "deleted"
    # only new content was downloaded: the rename is metadata-only
    downloads = graph.requests_to("download")
    assert len(downloads) == 2, [r.path.split("?")[0] for r in downloads]
    again = sync(project)
    assert "created 0, updated 0, deleted 0" in again.stdout


def test_410_recovery_no_duplicates_and_deletions(project, graph, drive, redis_client):
    files = [drive.put_file(f"/F{i % 3}/doc{i}.pdf", b"x%d" % i) for i in range(12)]
    configure(project, graph)
    sync(project)
    redis_client.delete("document_processing")
    drive.delete("/F0/doc0.pdf")
    drive.delete("/F1")  # a whole folder while our link is dead: no tombstones will ever reach us
    added = drive.put_file("/F2/late.pdf", b"late")
    graph.expire_delta_links(drive)
    out = sync(project)
    f1 = [f for f in files if f.name in {f"doc{i}.pdf" for i in range(12) if i % 3 == 1}]
    expected = Counter({("delete_document", f"sp:{files[0].id}"): 1, ("process_document", f"sp:{added.id}"): 1})
    expected.update(("delete_document", f"sp:{f.id}") for f in f1)
    assert Counter(tasks(redis_client)) == expected, out.stdout + out.stderr

    # a 410 in the middle of an enumeration restarts it from the Location link
    redis_client.delete("document_processing")
    more = drive.put_file("/F2/more.pdf", b"more")
    drive.delete("/F2/late.pdf")
    graph.resync_next_link(1, inner_code="resyncChangesUploadDifferences")
    project.cli("sync", "sp", "--full", check=True)
    assert Counter(tasks(redis_client)) == Counter({("process_document", f"sp:{more.id}"): 1,
                                                    ("delete_document", f"sp:{added.id}"): 1})


@pytest.mark.parametrize("kind", ["seconds", "http-date", "503"])
def test_throttling_is_honoured(project, graph, drive, redis_client, kind):
    for i in range(6):
        drive.put_file(f"/T/f{i}.pdf", b"%d" % i)
    configure(project, graph, "download_concurrency: 4")
    if kind == "seconds":
        graph.throttle(429, retry_after=1, count=1)
        graph.throttle(429, retry_after=1, count=1, origin="download")
    elif kind == "http-date":
        graph.throttle(429, retry_after="http-date", count=1, date_seconds=2)
    else:
        graph.throttle(503, retry_after=1, count=2, origin="any")
    sync(project)
    assert graph.requests_during_throttle == 0
    assert len(tasks(redis_client)) == 6


def test_throttle_without_retry_after_backs_off(project, graph, drive, redis_client, monkeypatch):
    drive.put_file("/a.pdf", b"a")
    configure(project, graph)
    monkeypatch.setattr(GraphHttp, "BACKOFF_BASE", 0.2)
    monkeypatch.setattr(GraphHttp, "RETRY_INITIAL", 0.01)
    graph.throttle(429, retry_after=None, count=2)
    graph.fail_nth_request(4, 502)
    graph.empty_body_once()
    engine = Engine(load_config(project.config))
    summary = engine.run("sp")
    assert summary.result == "ok" and summary.created == 1, summary


def test_token_refresh_and_bad_credentials(project, graph, drive, redis_client):
    drive.put_file("/a.pdf", b"a")
    configure(project, graph)
    engine = Engine(load_config(project.config))
    connector_http: list[GraphHttp] = []
    original = Engine.make_connector

    def spy(self, *args, **kwargs):
        conn = original(self, *args, **kwargs)
        connector_http.append(conn.http)
        return conn

    engine.make_connector = spy.__get__(engine)
    graph.token_lifetime = 3600
    summary = engine.run("sp")
    assert summary.created == 1
    drive.put_file("/b.pdf", b"b")
    graph.revoke_tokens()  # every cached token is now refused: one refresh, then it works
    tokens = graph.tokens_issued
    summary = engine.run("sp")
    assert summary.result == "ok" and summary.created == 1
    assert graph.tokens_issued == tokens + 1

    configure(project, graph, secret="wrong-secret")
    out = project.cli("sync", "sp")
    assert out.returncode == 1
    assert "invalid_client" in out.stdout + out.stderr and "wrong-secret" not in out.stdout + out.stderr


def test_sigkill_mid_enumeration_then_restart_queues_each_file_once(project, graph, drive, redis_client):
    graph.store.lock.acquire()
    try:
        n = 1000
        drive.bulk_populate(n_files=n, n_folders=20, size=2048)
    finally:
        graph.store.lock.release()
    configure(project, graph, "download_concurrency: 2")
    seed, rng = crash_rng()
    # Each run dies at a random point after its first commit.
    kills = kill_at_random_commits([sys.executable, "-m", "kmrl_sync", "sync", "sp", "-c", str(project.config)],
                                   project.root, lambda: len(tasks(redis_client)), seed=seed, rng=rng, runs=4,
                                   jitter=0.2)
    final = project.cli("sync", "sp", timeout=300)
    assert final.returncode == 0, (seed, final.stdout, final.stderr)
    assert kills.count >= 2, f"seed {seed}: the sync finished before most kills"
    counts = Counter(d for t, d in tasks(redis_client) if t == "process_document")
    dupes = {d: c for d, c in counts.items() if c > 1}
    assert not dupes, (seed, list(dupes.items())[:5])
    assert len(counts) == n, seed
    assert not [t for t, _ in tasks(redis_client) if t == "delete_document"]
    assert "created 0, updated 0, deleted 0" in project.cli("sync", "sp").stdout


class _StaticTokens:
    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self) -> str:
        return self.token

    def invalidate(self, token: str) -> None:
        pass


def test_lean_download_path_expired_urls_and_dropped_connections(graph, drive):
    """The download transport (transport.py's KeepAliveTransport) against the real server: expired
    pre-authenticated URLs fall back to /content + 302, a kept-alive connection that died is
    replaced without a retry round, and no Authorization header reaches the download host."""
    import socket

    from kmrl_sync.connectors.sharepoint.delta import DOWNLOAD_URL, fetch_page, initial_url
    from kmrl_sync.connectors.sharepoint.transport import KeepAliveTransport

    drive.put_file("/a.txt", b"alpha")
    drive.put_file("/b.txt", b"bravo" * 5000)
    http = GraphHttp(graph.graph_url, _StaticTokens(graph.issue_token()))
    try:
        assert isinstance(http.downloads, KeepAliveTransport)
        page = fetch_page(http, initial_url(graph.graph_url, drive.id, 50))
        files = {i["name"]: i for i in page.items if "file" in i}

        def get(name: str) -> bytes:
            url = f"{graph.graph_url}/drives/{drive.id}/items/{files[name]['id']}/content"
            return http.download(url, files[name][DOWNLOAD_URL], lambda chunks: b"".join(chunks))

        assert get("a.txt") == b"alpha"
        conn = next(iter(http.downloads._local.conns.values()))
        conn.sock.shutdown(socket.SHUT_RDWR)  # as if the host had dropped the idle connection
        assert get("b.txt") == b"bravo" * 5000
        assert http.stats["retried"] == 0
        graph.clear_requests()
        graph.expire_download_urls()
        assert get("a.txt") == b"alpha"
        assert [(r.origin, r.status) for r in graph.requests] == [("download", 401), ("graph", 302),
                                                                 ("download", 200)]
        assert not [r for r in graph.requests_to("download") if r.has_authorization]
    finally:
        http.close()


def test_a_folder_window_smaller_than_the_library_syncs_the_same(project, graph, drive, redis_client, monkeypatch):
    """Issue 19: FolderTree keeps a bounded window of folders; with a window of 4 (every page
    evicts), a first sync, renames, moves and deletions of folders give the paths and tasks a
    window holding everything gives."""
    from kmrl_sync.connectors.sharepoint.tree import FolderTree

    monkeypatch.setattr(FolderTree, "CACHE_LIMIT", 4)
    files = {}
    for top in range(3):
        for sub in range(4):
            for leaf in range(2):
                path = f"/T{top}/S{sub}/L{leaf}/f{top}{sub}{leaf}.pdf"
                files[path] = drive.put_file(path, path.encode())
    configure(project, graph)  # pages of 3 items: folders and their files across many pages
    engine = project.engine()
    summary = engine.run("sp")
    assert (summary.result, summary.created, summary.failed) == ("ok", 24, 0), summary
    for path, item in files.items():
        assert doc(redis_client, item.id)["path"] == path

    drive.rename("/T0", "Top0")
    drive.move("/T1/S2", "/")
    drive.delete("/T2/S0")
    redis_client.delete("document_processing")
    summary = engine.run("sp")
    assert summary.result == "ok" and summary.failed == 0, summary
    expected = {}
    for path, item in files.items():
        new = path.replace("/T0/", "/Top0/").replace("/T1/S2/", "/S2/")
        expected[item.id] = None if path.startswith("/T2/S0/") else new
    got = Counter(tasks(redis_client))
    assert got == Counter({("delete_document" if new is None else "process_document", f"sp:{item_id}"): 1
                           for item_id, new in expected.items() if new is None or new != next(
                               p for p, i in files.items() if i.id == item_id)})
    for item_id, new in expected.items():
        if new is not None:
            assert doc(redis_client, item_id)["path"] == new


def test_downloads_follow_the_proxy_the_environment_names(monkeypatch):
    """KeepAliveTransport (http.client) reads no *_PROXY variables: a download whose URL the
    environment sends through a proxy goes to httpx's own transport with that proxy, and a host
    NO_PROXY names goes direct. The proxy here is a loopback server answering absolute-form GETs."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = b"via proxy"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    http = GraphHttp("http://graph.invalid/v1.0", _StaticTokens("t"))
    try:
        url = "http://download.invalid/f?tempauth=abc"
        assert http.download("http://graph.invalid/v1.0/x", url, lambda chunks: b"".join(chunks)) == b"via proxy"
        assert seen == [url]
        direct = f"{proxy}/direct?tempauth=abc"  # NO_PROXY names this host: asked directly, not as a proxy
        assert http.download("http://graph.invalid/v1.0/x", direct, lambda chunks: b"".join(chunks)) == b"via proxy"
        assert seen == [url, "/direct?tempauth=abc"]
    finally:
        http.close()
        server.shutdown()
