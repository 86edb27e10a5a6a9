"""SharePoint connector pieces that need no server: hashing, options, cursor, HTTP policy."""

from __future__ import annotations

import base64
import json
import time
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from kmrl_sync.connectors.sharepoint.cursor import Cursor
from kmrl_sync.connectors.sharepoint.delta import content_version, kind_of, last_wins
from kmrl_sync.connectors.sharepoint.http import (
    MAX_ERROR_BODY_BYTES,
    MAX_ERROR_CODES,
    MAX_ERROR_TEXT_CHARS,
    MAX_PAGE_BYTES,
    GraphError,
    GraphHttp,
    ResyncRequired,
    retry_after_seconds,
)
from kmrl_sync.connectors.sharepoint.options import SharePointOptions
from kmrl_sync.connectors.sharepoint.quickxor import QuickXorHash, quickxor_b64
from kmrl_sync.engine.connector import ConnectorError

GRAPH = "https://graph.example/v1.0"


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    (b"\x4a", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
    (b"abc", "YRDDGAAAAAAAAAAAAwAAAAAAAAA="),
    (b"hello world", "aCgDG9jwBhDc4Q1yawMZAAAAAAA="),
    (base64.b64decode("2fuxhBJXtpWFe8dOfdGeHw=="), "O9tHLAghgSvYohKFyMMxnNCHaHg="),
])
def test_quickxor_vectors_any_chunking(data: bytes, expected: str) -> None:
    assert quickxor_b64(data) == expected
    for step in (1, 3, 161):
        h = QuickXorHash()
        for i in range(0, len(data), step):
            h.update(data[i:i + step])
        assert h.b64digest() == expected


def _opts(**kw: Any) -> dict[str, Any]:
    return {"tenant_id": "t", "client_id": "c", "site_url": "https://x.sharepoint.com/sites/E", **kw}


def test_options_need_exactly_one_credential(tmp_path) -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        SharePointOptions.model_validate(_opts())
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    cert = {"key_file": str(tmp_path / "key.pem"), "thumbprint": "ab" * 20}
    with pytest.raises(ValidationError, match="exactly one"):
        SharePointOptions.model_validate(_opts(client_secret="a", certificate=cert))
    with pytest.raises(ValidationError):
        SharePointOptions.model_validate(_opts(client_secret="a", bogus=1))
    o = SharePointOptions.model_validate(_opts(client_secret="a", folder="/Drawings/", page_size=50))
    assert o.folder == "Drawings" and o.secret.get_secret_value() == "a"
    (tmp_path / "secret").write_text("from-file\n")
    o = SharePointOptions.model_validate(_opts(client_secret_file="secret"), context={"base_dir": tmp_path})
    assert o.secret.get_secret_value() == "from-file"


def test_cursor_roundtrip_and_rejects_garbage() -> None:
    c = Cursor("s", "d", "r", "w", "scope", phase="incremental", delta_link="https://g/x?token=1", gen="g1")
    assert Cursor.loads(c.dumps()) == c
    assert Cursor.loads("not json") is None
    assert Cursor.loads(json.dumps({"site_id": "s"})) is None


def test_items_last_wins_deleted_first_and_versions() -> None:
    items = [{"id": "a", "name": "1", "file": {}}, {"id": "b", "folder": {}}, {"id": "a", "deleted": {}, "file": {}}]
    assert [(i["id"], kind_of(i)) for i in last_wins(items)] == [("b", "folder"), ("a", "deleted")]
    assert content_version({"cTag": "c1", "eTag": "e1"}) == "c1"
    assert content_version({"eTag": "e1", "size": 3, "file": {"hashes": {"quickXorHash": "Q"}}}) == "qxh:Q:3"
    assert content_version({"eTag": "e1", "file": {"hashes": {}}}) == "e1"


def test_retry_after_seconds_and_http_date() -> None:
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    now = time.time()
    assert 9 <= retry_after_seconds(formatdate(now + 10, usegmt=True), now=now) <= 10


class Tokens:
    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[str] = []

    def get_token(self) -> str:
        if not self.invalidated or self.invalidated[-1] == f"tok{self.issued}":
            self.issued += 1
        return f"tok{self.issued}"

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)


def _http(handler, tokens=None) -> GraphHttp:
    http = GraphHttp(GRAPH, tokens or Tokens(), transport=httpx.MockTransport(handler))
    http.RETRY_INITIAL = 0.0
    http.BACKOFF_BASE = 0.01
    return http


def test_401_refreshes_once_then_fails() -> None:
    seen: list[str] = []

    def always_401(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken", "message": "expired"}})

    with pytest.raises(ConnectorError, match="refused a fresh access token"):
        _http(always_401).get_json("sites/root")
    assert seen == ["Bearer tok1", "Bearer tok2"]

    calls: list[str] = []

    def once_401(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["Authorization"])
        if len(calls) == 1:
            return httpx.Response(401, json={"error": {"code": "InvalidAuthenticationToken"}})
        return httpx.Response(200, json={"id": "ok"})

    assert _http(once_401).get_json("sites/root") == {"id": "ok"}
    assert calls == ["Bearer tok1", "Bearer tok2"]


def test_bearer_only_to_graph_and_410_location() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(410, headers={"Location": f"{GRAPH}/drives/d/root/delta?token=fresh"},
                              json={"error": {"code": "resyncRequired", "innerError": {
                                  "code": "resyncChangesApplyDifferences"}}})

    http = _http(handler)
    with pytest.raises(ConnectorError, match="outside graph_url"):
        http.get_json("https://evil.example/v1.0/drives/d/root/delta")
    with pytest.raises(ResyncRequired) as gone:
        http.get_json(f"{GRAPH}/drives/d/root/delta?token=old")
    assert gone.value.location.endswith("token=fresh")
    assert gone.value.code == "resyncRequired/resyncChangesApplyDifferences"


def test_download_redirect_drops_authorization_and_item_errors() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "graph.example":
            assert request.headers["Authorization"].startswith("Bearer ")
            item = request.url.path.split("/")[-2]
            if item == "denied":
                return httpx.Response(403, json={"error": {"code": "accessDenied", "message": "no"}})
            return httpx.Response(302, headers={"Location": f"https://dl.example/f/{item}?tempauth=x"})
        assert "Authorization" not in request.headers
        if request.url.path.endswith("missing"):
            return httpx.Response(404, json={"error": {"code": "itemNotFound"}})
        return httpx.Response(200, content=b"bytes of " + request.url.path.encode())

    http = _http(handler)
    got = http.download(f"{GRAPH}/drives/d/items/ok/content", None, lambda chunks: b"".join(chunks))
    assert got == b"bytes of /f/ok"
    for item, status in (("denied", 403), ("missing", 404)):
        with pytest.raises(GraphError) as err:
            http.download(f"{GRAPH}/drives/d/items/{item}/content", None, lambda chunks: b"".join(chunks))
        assert err.value.status == status
    # an expired pre-authenticated URL falls back to /content
    expired = "https://dl.example/f/missing?tempauth=old"
    assert http.download(f"{GRAPH}/drives/d/items/ok/content", expired, lambda c: b"".join(c)) == b"bytes of /f/ok"


def test_throttle_pauses_then_transient_errors_retry() -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        if len(times) == 2:
            return httpx.Response(503)  # no Retry-After: jittered backoff
        if len(times) == 3:
            return httpx.Response(502)
        if len(times) == 4:
            return httpx.Response(200, content=b"")  # empty body under load
        return httpx.Response(200, json={"ok": True})

    http = _http(handler)
    assert http.get_json("x") == {"ok": True}
    assert times[1] - times[0] >= 0.3  # nothing sent inside the Retry-After window
    assert http.stats["throttled"] == 2 and http.stats["retried"] == 2


class _Streamed(httpx.SyncByteStream):
    """A body that arrives over the wire (an `httpx.Response(json=...)` would be read at once)."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self):
        for start in range(0, len(self.body), 16384):  # in pieces, as a socket delivers it
            yield self.body[start:start + 16384]


@pytest.mark.parametrize("items", [1000, 5000])  # pages of about 130 KB and 650 KB
def test_a_page_body_is_released_once_parsed_whatever_its_size(items: int) -> None:
    """Issue 19: httpx keeps a response and its stream in a cycle, so a body read into the response
    lived until the cyclic collector ran, which a sync makes rare: every page piled up (about
    1.2 KB per item), and only bodies over 256 KB were collected early. The body must not be
    kept by the response at all (the response's own few KB still wait for the collector)."""
    import gc
    import tracemalloc

    body = json.dumps({"value": [{"id": f"{i:08d}", "name": "x" * 100} for i in range(items)],
                       "@odata.deltaLink": f"{GRAPH}/drives/d/root/delta?token=1"}).encode()

    def page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Type": "application/json"}, stream=_Streamed(body))

    http = _http(page)
    assert len(http.get_json("drives/d/root/delta")["value"]) == items  # warm: the client's own state
    thresholds = gc.get_threshold()
    gc.set_threshold(1_000_000, 100, 100)  # the collector late: nothing may wait for it
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            assert len(http.get_json("drives/d/root/delta")["value"]) == items
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.set_threshold(*thresholds)
    assert kept < len(body), f"{kept} bytes kept after 20 pages of {len(body)} bytes"


class _Items:
    """What FolderTree reads: the committed `items` records (a dict), counting round trips."""

    def __init__(self) -> None:
        self.records: dict[str, str] = {}
        self.reads = 0

    def aux_get(self, name: str, fields: list[str]) -> list[str | None]:
        self.reads += 1
        return [self.records.get(f) for f in fields]


def test_the_folder_tree_is_a_window_whatever_the_library() -> None:
    """Issue 19: every folder of a library stayed cached (about 350 bytes each). 50,000 folders
    in pages of 200: the window stays within CACHE_LIMIT, a page's own folders stay until it is
    committed, and a folder that left the window is read back from Redis with its path."""
    from kmrl_sync.connectors.sharepoint.tree import FolderTree, encode

    state = _Items()
    tree = FolderTree(state, "root")  # type: ignore[arg-type]
    parent_of = {}
    for page in range(250):
        ids = [f"F{page * 200 + i}" for i in range(200)]
        for n, item_id in enumerate(ids):
            parent = "root" if page == 0 and n < 10 else f"F{(page * 200 + n) // 10}"
            parent_of[item_id] = parent
            tree.set(item_id, parent, item_id.lower())
        assert all(tree.get(i) == (parent_of[i], i.lower()) for i in ids)  # the page's own: never evicted
        for item_id in ids:  # the page's last batch carries the records
            state.records[item_id] = encode({"p": parent_of[item_id], "n": item_id.lower(), "f": 1})
        tree.committed()
        assert len(tree.known) <= FolderTree.CACHE_LIMIT and len(tree.paths) <= FolderTree.CACHE_LIMIT + 1

    def expected(item_id: str) -> str:
        parts = []
        while item_id != "root":
            parts.append(item_id.lower())
            item_id = parent_of[item_id]
        return "/".join(reversed(parts))

    for item_id in ("F5", "F12345", "F49999", "F777"):
        assert tree.path(item_id) == expected(item_id)
    assert state.reads > 0


def _endless(pulled: list[int], chunk: bytes = b"x" * (1 << 20)):
    """A body that never ends, counting the chunks taken from it."""
    while True:
        pulled.append(len(chunk))
        yield chunk


def test_a_graph_page_that_never_ends_is_refused_without_being_held() -> None:
    pulled: list[int] = []
    http = _http(lambda request: httpx.Response(200, content=_endless(pulled)))
    with pytest.raises(ConnectorError, match="more than 32 MiB for one page"):
        http.get_json("drives/d/root/delta")
    assert sum(pulled) <= MAX_PAGE_BYTES + (1 << 20)


def test_graph_error_text_is_read_and_kept_bounded() -> None:
    pulled: list[int] = []
    nested: dict = {"code": "deepest"}
    for depth in range(100):
        nested = {"code": f"d{depth}", "innerError": nested}
    answers = {
        "endless": lambda: httpx.Response(400, content=_endless(pulled, b"{" * 65536)),
        "huge": lambda: httpx.Response(400, json={"error": {"code": "big", "message": "m" * (1 << 20)}}),
        "wordy": lambda: httpx.Response(400, json={"error": {"code": "c" * 5000, "message": "m" * 20_000}}),
        "deep": lambda: httpx.Response(410, json={"error": nested}),
    }
    http = _http(lambda request: answers[request.url.path.rsplit("/", 1)[-1]]())

    with pytest.raises(GraphError) as endless:  # read no further than the bound; unreadable: the status
        http.get_json("endless")
    assert (endless.value.code, endless.value.message) == ("http400", "Bad Request")
    assert sum(pulled) <= MAX_ERROR_BODY_BYTES + 65536
    with pytest.raises(GraphError) as huge:  # cut at the bound, so no longer JSON either
        http.get_json("huge")
    assert huge.value.code == "http400"
    with pytest.raises(GraphError) as wordy:
        http.get_json("wordy")
    assert len(wordy.value.code) == len(wordy.value.message) == MAX_ERROR_TEXT_CHARS
    assert wordy.value.message.endswith("\u2026") and len(str(wordy.value)) < 3 * MAX_ERROR_TEXT_CHARS
    with pytest.raises(ResyncRequired) as gone:
        http.get_json("deep")
    assert gone.value.code.split("/") == [f"d{d}" for d in range(99, 99 - MAX_ERROR_CODES, -1)]
