"""HTTP handlers for the two origins of the fake: Graph (+ the token authority) and
the pre-authenticated download host.

The download host is a different origin on purpose: real ``/content`` redirects go
from graph.microsoft.com to ``{tenant}.sharepoint.com``, and HTTP clients strip the
Authorization header on cross-origin redirects. Sending the bearer there anyway is a
client bug (token leak), so the fake answers 401.
"""

from __future__ import annotations

import json
import re
import time
import traceback
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .auth import WWW_AUTHENTICATE, TokenError
from .delta import DeltaError, ResyncRequired, parse_select, parse_top
from .store import Drive, Item, Site

if TYPE_CHECKING:
    from .app import FakeGraph, RecordedRequest


@dataclass(frozen=True)
class WordyError:
    """A request fault (FakeGraph.wordy_error_once): answer 400 with `message` as the error's text."""

    message: str

JSON_TYPE = (
    "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8"
)
RESYNC_MESSAGE = (
    "Resync required. Replace any local items with the server's version (including deletes) if you're sure "
    "that the service was up to date with your local changes when you last sync'd. Upload any local changes "
    "that the server doesn't know about."
)

_SITE_BY_PATH = re.compile(r"^/sites/([^/:]+):(/[^:]*)(?::(/.*)?)?$")
_SITE_BY_ID = re.compile(r"^/sites/([^/]+)(/.*)?$")
_DRIVE = re.compile(r"^/drives/([^/]+)(/.*)?$")
_DELTA = re.compile(r"^/(?:microsoft\.graph\.)?delta(?:\((?:token=)?'?([^')]*)'?\))?$")
_ITEM = re.compile(r"^/items/([^/]+)(/.*)?$")
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"|\*')
_ROOT_PATH = re.compile(r"^/root:(/[^:]*)(?::(/.*)?)?$")


class FakeHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeGraph and origin name."""

    daemon_threads = True

    def __init__(self, app: FakeGraph, origin: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.app = app
        self.origin = origin
        super().__init__(("127.0.0.1", port), handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real service; every answer sets Content-Length
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    timeout = 60
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: FakeHTTPServer

    rec: RecordedRequest
    query: dict[str, str]
    route_path: str
    body: bytes

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging; ``FakeGraph.requests`` is the log."""

    @property
    def app(self) -> FakeGraph:
        return self.server.app

    # -- dispatch -----------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        self.route_path = unquote(split.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self.rec = self.app._record(self)
        try:
            self.handle_request()
        except Exception:  # pragma: no cover - a bug in the fake should be visible, not hang a test
            self.send_json(500, {"error": {"code": "fakeServerBug", "message": traceback.format_exc()}})

    def handle_request(self) -> None:
        raise NotImplementedError

    # -- responses --------------------------------------------------------------
    def send_bytes(
        self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None
    ) -> None:
        self.rec.status = status
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("request-id", self.rec.request_id)
        client_request_id = self.headers.get("client-request-id")
        if client_request_id:
            self.send_header("client-request-id", client_request_id)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), JSON_TYPE, headers)

    def send_error_json(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        inner_code: str | None = None,
    ) -> None:
        inner: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "request-id": self.rec.request_id,
            "client-request-id": self.headers.get("client-request-id") or self.rec.request_id,
        }
        if inner_code:
            inner = {"code": inner_code, **inner}
        self.send_json(status, {"error": {"code": code, "message": message, "innerError": inner}}, headers)

    def apply_throttle(self) -> bool:
        """Answer from the throttle / fault hooks if one applies; True when answered."""
        verdict = self.app._throttle_verdict(self.rec)
        if verdict is None:
            return False
        status, retry_after = verdict
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        if status == 429:
            self.send_error_json(
                status, "activityLimitReached", "The request has been throttled", headers, "throttledRequest"
            )
        elif status == 509:
            self.send_error_json(status, "bandwidthLimitExceeded", "Bandwidth limit exceeded", headers)
        else:
            self.send_error_json(
                status, "serviceNotAvailable", "The service is temporarily unavailable", headers
            )
        return True


class GraphHandler(_Handler):
    """``/v1.0/...`` Graph routes plus the Entra ID authority routes."""

    def handle_request(self) -> None:
        path = self.route_path
        if path.startswith("/v1.0/") or path == "/v1.0":
            self.handle_graph(path[len("/v1.0") :])
        else:
            self.handle_authority(path)

    # -- authority ----------------------------------------------------------------
    def handle_authority(self, path: str) -> None:
        issuer = self.app.issuer
        parts = [p for p in path.split("/") if p]
        if self.command == "POST" and len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            form = {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()}
            try:
                self.send_json(200, issuer.token_response(parts[0], form), {"Cache-Control": "no-store"})
            except TokenError as err:
                self.send_json(err.status, err.body)
            return
        if (
            self.command == "GET"
            and len(parts) == 4
            and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]
        ):
            if parts[0] != issuer.tenant_id:
                self.send_json(
                    400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."}
                )
            else:
                # Entra names its endpoints https; a client that reached us over plain HTTP maps
                # them back (kmrl_sync/connectors/sharepoint/auth.py, for an http:// authority_url).
                public = f"https://{self.headers.get('Host') or self.app.authority_url.split('://', 1)[1]}"
                self.send_json(200, issuer.openid_configuration(public, parts[0]))
            return
        if self.command == "GET" and parts[-2:] == ["discovery", "instance"]:
            oidc = f"{self.app.authority_url}/{issuer.tenant_id}/v2.0/.well-known/openid-configuration"
            self.send_json(
                200,
                {
                    "tenant_discovery_endpoint": oidc,
                    "api-version": "1.1",
                    "metadata": [],
                },
            )
            return
        self.send_json(404, {"error": "not_found", "error_description": f"No authority route for {path}"})

    # -- graph --------------------------------------------------------------------
    def handle_graph(self, path: str) -> None:
        problem = self.app.issuer.check_bearer(self.headers.get("Authorization"))
        if problem is not None:
            self.send_error_json(
                401, "InvalidAuthenticationToken", problem, {"WWW-Authenticate": WWW_AUTHENTICATE}
            )
            return
        fault = self.app._request_fault()
        if fault == "empty":
            self.send_bytes(200, b"", JSON_TYPE)
            return
        if fault == "echo":
            self.send_error_json(400, "invalidRequest",
                                 f"Malformed request: Authorization: {self.headers.get('Authorization')}")
            return
        if isinstance(fault, WordyError):
            self.send_error_json(400, "invalidRequest", fault.message)
            return
        if isinstance(fault, int):
            codes = {500: "generalException", 502: "badGateway", 504: "gatewayTimeout"}
            self.send_error_json(fault, codes.get(fault, "serviceNotAvailable"), "Injected server error")
            return
        if self.apply_throttle():
            return
        if self.command not in ("GET", "HEAD"):
            self.send_error_json(
                405, "notSupported", "The fake Graph is read-only over HTTP; mutate via Python."
            )
            return
        with self.app.store.lock:
            self.route_graph(path)

    def route_graph(self, path: str) -> None:
        store = self.app.store
        if path == "/sites/root":
            site = next((s for s in store.sites if not s.path), None)
            return self.site_route(site, "")
        m = _SITE_BY_PATH.match(path)
        if m:
            return self.site_route(store.site_by_path(m.group(1), m.group(2)), m.group(3) or "")
        m = _SITE_BY_ID.match(path)
        if m:
            key = m.group(1)
            site = store.site_by_id(key) if "," in key else store.site_by_path(key, "")
            return self.site_route(site, m.group(2) or "")
        m = _DRIVE.match(path)
        if m:
            return self.drive_route(store.drives.get(m.group(1)), m.group(2) or "")
        self.send_error_json(
            400, "BadRequest", f"Resource not found for the segment '{path.strip('/').split('/')[0]}'."
        )

    def site_route(self, site: Site | None, rest: str) -> None:
        if site is None:
            self.send_error_json(404, "itemNotFound", "Requested site could not be found")
            return
        if rest in ("", "/"):
            self.send_json(
                200, {"@odata.context": f"{self.app.graph_url}/$metadata#sites/$entity", **site.to_json()}
            )
            return
        if rest == "/drives":
            self.list_drives(site)
            return
        if rest == "/drive" or rest.startswith("/drive/"):
            self.drive_route(site.default_drive, rest[len("/drive") :])
            return
        m = _DRIVE.match(rest)
        if m:
            drive = self.app.store.drives.get(m.group(1))
            self.drive_route(drive if drive in site.drives else None, m.group(2) or "")
            return
        self.send_error_json(400, "BadRequest", f"Unsupported site segment {rest!r}")

    def list_drives(self, site: Site) -> None:
        select = parse_select(self.query.get("$select"))
        wants_system = bool(select and "system" in [s.lower() for s in select])
        drives = [d for d in site.drives if wants_system or not d.system]
        page = self.app.drives_page_size
        try:
            top = min(int(self.query.get("$top") or page), page)
            skip = int(self.query.get("$skiptoken") or 0)
        except ValueError:
            self.send_error_json(400, "invalidRequest", "Invalid paging parameter")
            return
        chunk = drives[skip : skip + top]
        body: dict[str, Any] = {
            "@odata.context": f"{self.app.graph_url}/$metadata#drives",
            "value": [_select(d.to_json(), select) for d in chunk],
        }
        if skip + top < len(drives):
            extra = f"&$select={self.query['$select']}" if select else ""
            body["@odata.nextLink"] = (
                f"{self.app.graph_url}/sites/{site.id}/drives?$top={top}&$skiptoken={skip + top}{extra}"
            )
        self.send_json(200, body)

    def drive_route(self, drive: Drive | None, rest: str) -> None:
        if drive is None:
            self.send_error_json(404, "itemNotFound", "The requested drive could not be found.")
            return
        if rest in ("", "/"):
            self.send_json(200, _select(drive.to_json(), parse_select(self.query.get("$select"))))
            return
        if rest == "/root" or rest.startswith("/root/"):
            self.item_route(drive, drive.root, rest[len("/root") :])
            return
        m = _ROOT_PATH.match(rest)
        if m:
            try:
                item = drive.item_by_path(m.group(1))
            except KeyError:
                item = None
            self.item_route(drive, item, m.group(2) or "")
            return
        m = _ITEM.match(rest)
        if m:
            item = drive.items.get(m.group(1))
            self.item_route(drive, item, m.group(2) or "")
            return
        self.send_error_json(400, "BadRequest", f"Unsupported drive segment {rest!r}")

    def item_route(self, drive: Drive, item: Item | None, rest: str) -> None:
        if item is None or item.deleted:
            self.send_error_json(404, "itemNotFound", "The resource could not be found.")
            return
        m = _DELTA.match(rest)
        if m:
            if item.kind != "root":
                self.send_error_json(
                    400,
                    "invalidRequest",
                    "Delta query is only supported on the root folder of a SharePoint drive.",
                )
                return
            token = m.group(1) if m.group(1) else self.query.get("token")
            self.delta(drive, token)
            return
        if rest in ("", "/"):
            select = parse_select(self.query.get("$select"))
            self.send_json(200, self.app._serialize(item, select, default_url=True))
            return
        if rest == "/children":
            self.list_children(drive, item)
            return
        if rest == "/content":
            self.content_redirect(item)
            return
        self.send_error_json(400, "BadRequest", f"Unsupported item segment {rest!r}")

    def list_children(self, drive: Drive, item: Item) -> None:
        select = parse_select(self.query.get("$select"))
        try:
            top = parse_top(self.query.get("$top"))
            skip = int(self.query.get("$skiptoken") or 0)
        except (DeltaError, ValueError):
            self.send_error_json(400, "invalidRequest", "Invalid paging parameter")
            return
        kids = list(item.children.values())
        body: dict[str, Any] = {
            "value": [self.app._serialize(k, select, default_url=True) for k in kids[skip : skip + top]]
        }
        if skip + top < len(kids):
            extra = f"&$select={self.query['$select']}" if select else ""
            base = f"{self.app.graph_url}/drives/{drive.id}/items/{item.id}/children"
            body["@odata.nextLink"] = f"{base}?$top={top}&$skiptoken={skip + top}{extra}"
        self.send_json(200, body)

    def content_redirect(self, item: Item) -> None:
        if item.kind != "file":
            self.send_error_json(404, "itemNotFound", "The item has no content stream.")
            return
        if _etag_matches(self.headers.get("If-None-Match"), item):
            self.send_bytes(304, b"", None, {"ETag": item.etag})
            return
        self.send_bytes(302, b"", None, {"Location": self.app.download_url(item)})

    def delta(self, drive: Drive, token: str | None) -> None:
        app = self.app
        try:
            select = parse_select(self.query.get("$select"))
            top = parse_top(self.query.get("$top"))
            base = f"{app.graph_url}/drives/{drive.id}/root/delta?token="
            body = app.delta_engine.handle(
                drive,
                token,
                select,
                top,
                serialize=lambda item, sel: app._serialize(item, sel, default_url=False),
                link=lambda tok: base + tok,
            )
        except DeltaError as err:
            self.send_error_json(err.status, err.code, err.message)
            return
        except ResyncRequired as gone:
            location = f"{app.graph_url}/drives/{drive.id}/root/delta?token={gone.location_token}"
            self.send_error_json(
                410, "resyncRequired", RESYNC_MESSAGE, {"Location": location}, gone.inner_code
            )
            return
        context = {"@odata.context": f"{app.graph_url}/$metadata#Collection(driveItem)"}
        self.send_json(200, {**context, **body})


class DownloadHandler(_Handler):
    """``/download/{item-id}?tempauth=...``: the pre-authenticated content host."""

    def handle_request(self) -> None:
        app = self.app
        if self.headers.get("Authorization"):
            self.send_error_json(
                401,
                "invalidRequest",
                "Pre-authenticated download URLs must not carry an Authorization header.",
            )
            return
        parts = [p for p in self.route_path.split("/") if p]
        if len(parts) != 2 or parts[0] != "download" or self.command not in ("GET", "HEAD"):
            self.send_error_json(404, "itemNotFound", "Unknown download path")
            return
        verdict = app._check_tempauth(self.query.get("tempauth"), parts[1])
        if verdict is not None:
            status, message = verdict
            self.send_error_json(status, "accessDenied" if status == 403 else "unauthenticated", message)
            return
        if self.apply_throttle():
            return
        with app.store.lock:
            item = app._item_anywhere(parts[1])
            body = item.served_body() if item is not None and not item.deleted else None
            etag = item.etag if item is not None else ""
        if item is None or body is None:
            self.send_error_json(404, "itemNotFound", "The file no longer exists.")
            return
        if _etag_matches(self.headers.get("If-None-Match"), item):
            self.send_bytes(304, b"", None, {"ETag": etag})
            return
        self.stream(body, item, etag)

    def stream(self, body: Any, item: Item, etag: str) -> None:
        size = body.size
        start, end, status = 0, size, 200
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(item.modified, usegmt=True),
        }
        rng = _parse_range(self.headers.get("Range"), size)
        if rng == "invalid":
            self.send_bytes(416, b"", None, {"Content-Range": f"bytes */{size}"})
            return
        if rng is not None:
            start, end = rng
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.rec.status = status
        self.send_response(status)
        self.send_header("Content-Type", item.mime_type or "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("request-id", self.rec.request_id)
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = end - start
        if self.app._consume_truncation():
            limit = (end - start) // 2
            self.close_connection = True
        sent = 0
        for chunk in body.iter_range(start, end):
            if sent + len(chunk) > limit:
                self.wfile.write(chunk[: limit - sent])
                break
            self.wfile.write(chunk)
            sent += len(chunk)


def _select(data: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return data
    wanted = {s.lower() for s in select} | {"id"}
    return {k: v for k, v in data.items() if k.lower() in wanted}


def _etag_matches(header: str | None, item: Item) -> bool:
    if not header:
        return False
    # Entity tags are quoted and SharePoint's contain commas: split on the quotes.
    tags = {t.removeprefix("W/") for t in _ENTITY_TAG.findall(header)}
    return "*" in tags or item.etag in tags or item.ctag in tags


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """Single ``bytes=a-b`` range -> (start, end_exclusive); "invalid" -> 416; None -> 200."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return "invalid"
            return (max(size - n, 0), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        return "invalid"
    return (start, min(end, size))


def new_request_id() -> str:
    return str(uuid.uuid4())
