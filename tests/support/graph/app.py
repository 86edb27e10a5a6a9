"""``FakeGraph``: owns the store, the two HTTP listeners and every test hook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from types import TracebackType
from typing import Any
from urllib.parse import quote

from .auth import TokenIssuer
from .delta import DeltaEngine, DeltaFaults
from .http import DownloadHandler, FakeHTTPServer, GraphHandler, WordyError, _Handler, new_request_id
from .store import Drive, Item, Site, Store


@dataclass
class RecordedRequest:
    """One request as the server saw it (Authorization values are redacted)."""

    method: str
    path: str  # path + query, as sent
    origin: str  # "graph" | "authority" | "download"
    time: float
    headers: dict[str, str]
    request_id: str
    during_throttle: bool = False
    status: int | None = None

    @property
    def has_authorization(self) -> bool:
        return any(k.lower() == "authorization" for k in self.headers)


@dataclass
class _Throttle:
    status: int
    retry_after: int | str | None
    count: int
    origin: str
    date_seconds: int


@dataclass
class _Faults:
    throttles: list[_Throttle] = field(default_factory=list)
    fail_at: dict[int, int] = field(default_factory=dict)  # graph request number -> status
    empty_body: int = 0
    truncate_downloads: int = 0
    echo_authorization: int = 0
    wordy_errors: list[str] = field(default_factory=list)


class FakeGraph:
    """A local Microsoft Graph + Entra ID + SharePoint download host.

    ``with FakeGraph(tenant_id=..., client_id=..., client_secret=...) as g:`` starts
    the listeners; sites, drives and items are built with the Python API and all
    changes feed the delta change log.
    """

    def __init__(
        self,
        tenant_id: str = "11111111-2222-3333-4444-555555555555",
        client_id: str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        client_secret: str = "fake-secret",
        *,
        seed: int = 0,
        download_host: str = "localhost",
        graph_port: int = 0,
        download_port: int = 0,
    ) -> None:
        self.store = Store(seed)
        self.issuer = TokenIssuer(tenant_id, client_id, client_secret)
        self.delta_faults = DeltaFaults()
        self.delta_engine = DeltaEngine(self.delta_faults)
        self.download_url_lifetime: float = 300.0
        self.expired_download_status = 401
        self.drives_page_size = 100
        self.throttle_window_rejects = True
        self.requests: list[RecordedRequest] = []
        self.requests_during_throttle = 0
        self.graph_request_count = 0
        self._tampered: dict[str, dict[str, Any]] = {}  # item name -> fields served instead
        self.denied_downloads: set[str] = set()  # item ids whose content the download host refuses (403)
        self._faults = _Faults()
        self._throttled_until = 0.0
        self._throttle_status = 429
        self._download_secret = secrets.token_bytes(32)
        self._download_valid_after = 0.0
        self._lock = threading.Lock()  # request log + hook state (store has its own)
        self._download_host = download_host
        self._ports = (graph_port, download_port)
        self._servers: list[FakeHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.graph_url = self.authority_url = self.download_origin = ""

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> FakeGraph:
        graph = FakeHTTPServer(self, "graph", self._ports[0], GraphHandler)
        download = FakeHTTPServer(self, "download", self._ports[1], DownloadHandler)
        self._servers = [graph, download]
        self.authority_url = f"http://127.0.0.1:{graph.server_address[1]}"
        self.graph_url = f"{self.authority_url}/v1.0"
        self.download_origin = f"http://{self._download_host}:{download.server_address[1]}"
        for server in self._servers:
            loop = {"poll_interval": 0.05}
            thread = threading.Thread(target=server.serve_forever, kwargs=loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- configuration shortcuts ---------------------------------------------------------
    @property
    def tenant_id(self) -> str:
        return self.issuer.tenant_id

    @property
    def client_id(self) -> str:
        return self.issuer.client_id

    @property
    def client_secret(self) -> str:
        return self.issuer.client_secret

    @property
    def token_url(self) -> str:
        return f"{self.authority_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def token_lifetime(self) -> int:
        """``expires_in`` of newly issued tokens (seconds); lower it to test re-auth."""
        return self.issuer.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self.issuer.token_lifetime = seconds

    @property
    def tokens_issued(self) -> int:
        return self.issuer.issued_count

    @property
    def issued_tokens(self) -> list[str]:
        return self.issuer.issued()

    def issue_token(self, lifetime: float | None = None) -> str:
        """A valid bearer token without going through HTTP (for tests not about auth)."""
        return self.issuer.issue(lifetime)[0]

    def revoke_tokens(self) -> None:
        """Every issued token becomes invalid (next Graph call -> 401)."""
        self.issuer.revoke_all()

    def add_site(
        self,
        hostname: str = "kmrl.sharepoint.com",
        path: str = "/sites/Engineering",
        display_name: str | None = None,
    ) -> Site:
        """A site reachable as ``/sites/{hostname}:/{path}`` and by its composite id."""
        return self.store.add_site(hostname, path, display_name)

    def drive(self, drive_id: str) -> Drive:
        return self.store.drives[drive_id]

    def delta_url(self, drive: Drive, select: str | None = None, top: int | None = None) -> str:
        """Token-less delta URL for ``drive`` (handy start link in tests)."""
        params = []
        if select:
            params.append(f"$select={select}")
        if top:
            params.append(f"$top={top}")
        return f"{self.graph_url}/drives/{drive.id}/root/delta" + ("?" + "&".join(params) if params else "")

    # -- delta fault hooks ---------------------------------------------------------
    def set_page_sizes(self, sizes: list[int]) -> None:
        """Sizes of the next delta pages, one per page (0 = empty page that still has nextLink)."""
        with self.store.lock:
            self.delta_faults.page_sizes = list(sizes)

    def duplicate_in_page(self, times: int = 1) -> None:
        """The next ``times`` non-empty delta pages repeat their first item at their end."""
        with self.store.lock:
            self.delta_faults.duplicate_in_page += times

    def duplicate_across_pages(self, times: int = 1) -> None:
        """The next ``times`` continuation pages start with the previous page's last item."""
        with self.store.lock:
            self.delta_faults.duplicate_across_pages += times

    def child_before_parent(self, times: int = 1) -> None:
        """The next ``times`` enumerations list one child before its parent folder."""
        with self.store.lock:
            self.delta_faults.child_before_parent += times

    def repeat_page(self, times: int = 1) -> None:
        """The next ``times`` pages hand out a nextLink that serves the same page again."""
        with self.store.lock:
            self.delta_faults.repeat_page += times

    def include_parents(self, enabled: bool = True) -> None:
        """Resumes also send the ancestor chain of changed items (Graph default w/o deltaExcludeParent)."""
        with self.store.lock:
            self.delta_faults.include_parents = enabled

    def set_resync_inner_code(self, code: str = "resyncChangesApplyDifferences") -> None:
        """innerError code of later 410s (e.g. resyncChangesUploadDifferences)."""
        with self.store.lock:
            self.delta_faults.resync_inner_code = code

    def expire_delta_links(self, drive: Drive | None = None, inner_code: str | None = None) -> None:
        """Every deltaLink handed out so far answers 410 resyncRequired (+ Location)."""
        with self.store.lock:
            for d in [drive] if drive else list(self.store.drives.values()):
                d.delta_epoch += 1
            if inner_code:
                self.delta_faults.resync_inner_code = inner_code

    def expire_next_links(self, drive: Drive | None = None, inner_code: str | None = None) -> int:
        """In-flight enumerations die now: their nextLinks answer 410."""
        with self.store.lock:
            if inner_code:
                self.delta_faults.resync_inner_code = inner_code
            return self.delta_engine.expire_cursors(drive)

    def resync_next_link(self, n: int = 1, inner_code: str | None = None) -> None:
        """The ``n``-th nextLink request from now answers 410 (mid-enumeration resync)."""
        with self.store.lock:
            self.delta_faults.resync_next_link_in = n
            if inner_code:
                self.delta_faults.resync_inner_code = inner_code

    # -- request fault hooks ---------------------------------------------------------
    def throttle(
        self,
        status: int = 429,
        retry_after: int | str | None = 1,
        count: int = 1,
        *,
        origin: str = "graph",
        date_seconds: int = 1,
    ) -> None:
        """Throttle the next ``count`` requests on ``origin`` ("graph", "download", "any").

        ``retry_after``: seconds, ``None`` (no header), ``"http-date"`` (an HTTP-date
        ``date_seconds`` ahead) or any other string sent verbatim. While a Retry-After
        window is open every request is counted in ``requests_during_throttle`` (and
        also rejected when ``throttle_window_rejects``): a good client sends none.
        """
        with self._lock:
            self._faults.throttles.append(_Throttle(status, retry_after, count, origin, date_seconds))

    def fail_nth_request(self, n: int, status: int = 500) -> None:
        """The ``n``-th authenticated Graph request from now (1 = next) fails with ``status``."""
        with self._lock:
            self._faults.fail_at[self.graph_request_count + n] = status

    def empty_body_once(self) -> None:
        """The next authenticated Graph request gets ``200`` with an empty body."""
        with self._lock:
            self._faults.empty_body += 1

    def echo_authorization_once(self) -> None:
        """The next authenticated Graph request gets ``400`` whose error message quotes the request's
        Authorization header (a server or proxy that echoes what it refused)."""
        with self._lock:
            self._faults.echo_authorization += 1

    def tamper(self, item_name: str, /, **fields: Any) -> None:
        """Serve the items named `item_name` with `fields` in place of theirs (`id=...`, `size=...`):
        a server whose answers are malformed or hostile. The store keeps the true item."""
        with self._lock:
            self._tampered[item_name] = fields

    def wordy_error_once(self, message: str) -> None:
        """The next authenticated Graph request gets ``400`` with `message` as the error's text (a
        server answering with pages of it)."""
        with self._lock:
            self._faults.wordy_errors.append(message)

    def truncate_download_once(self) -> None:
        """The next download sends half its body, then drops the connection."""
        with self._lock:
            self._faults.truncate_downloads += 1

    def expire_download_urls(self) -> None:
        """Every download URL handed out so far is expired (401, or ``expired_download_status``)."""
        with self._lock:
            self._download_valid_after = time.time() + 1e-6

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.requests_during_throttle = 0

    def requests_to(self, origin: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.origin == origin]

    # -- used by the handlers -------------------------------------------------------
    def _record(self, handler: _Handler) -> RecordedRequest:
        origin = handler.server.origin
        if origin == "graph" and not handler.route_path.startswith("/v1.0"):
            origin = "authority"
        headers = {
            k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in handler.headers.items()
        }
        now = time.time()
        rec = RecordedRequest(handler.command, handler.path, origin, now, headers, new_request_id())
        with self._lock:
            if origin != "authority" and now < self._throttled_until:
                rec.during_throttle = True
                self.requests_during_throttle += 1
            self.requests.append(rec)
        return rec

    def _request_fault(self) -> int | str | WordyError | None:
        """Consume the per-request hooks of an authenticated Graph request."""
        with self._lock:
            self.graph_request_count += 1
            status = self._faults.fail_at.pop(self.graph_request_count, None)
            if status is not None:
                return status
            if self._faults.empty_body:
                self._faults.empty_body -= 1
                return "empty"
            if self._faults.echo_authorization:
                self._faults.echo_authorization -= 1
                return "echo"
            if self._faults.wordy_errors:
                return WordyError(self._faults.wordy_errors.pop(0))
        return None

    def _throttle_verdict(self, rec: RecordedRequest) -> tuple[int, str | None] | None:
        with self._lock:
            now = time.time()
            if rec.during_throttle and self.throttle_window_rejects and now < self._throttled_until:
                return self._throttle_status, str(max(1, math.ceil(self._throttled_until - now)))
            for rule in self._faults.throttles:
                if rule.origin in (rec.origin, "any") and rule.count > 0:
                    rule.count -= 1
                    header: str | None
                    if rule.retry_after is None:
                        header = None
                    elif rule.retry_after == "http-date":
                        until = math.ceil(now) + rule.date_seconds
                        header = formatdate(until, usegmt=True)
                        self._open_window(until, rule.status)
                    elif isinstance(rule.retry_after, int):
                        header = str(rule.retry_after)
                        self._open_window(now + rule.retry_after, rule.status)
                    else:
                        header = str(rule.retry_after)
                    self._faults.throttles = [r for r in self._faults.throttles if r.count > 0]
                    return rule.status, header
        return None

    def _open_window(self, until: float, status: int) -> None:
        if until > self._throttled_until:
            self._throttled_until = until
            self._throttle_status = status

    def _consume_truncation(self) -> bool:
        with self._lock:
            if self._faults.truncate_downloads:
                self._faults.truncate_downloads -= 1
                return True
        return False

    def _serialize(self, item: Item, select: list[str] | None, *, default_url: bool) -> dict[str, Any]:
        """Item JSON honouring ``$select``; ``deleted`` vanishes unless selected, as on Graph."""
        wanted = {s.lower() for s in select} if select is not None else None
        want_url = (
            item.kind == "file"
            and not item.deleted
            and (("content.downloadurl" in wanted) if wanted is not None else default_url)
        )
        data = item.drive.item_json(item, self.download_url(item) if want_url else None)
        tampered = self._tampered.get(item.name)
        if tampered:
            data = {**data, **tampered}
        if wanted is None:
            return data
        wanted |= {"id", "@microsoft.graph.downloadurl"}
        return {k: v for k, v in data.items() if k.lower() in wanted}

    def _item_anywhere(self, item_id: str) -> Item | None:
        for drive in self.store.drives.values():
            item = drive.items.get(item_id)
            if item is not None:
                return item
        return None

    def download_url(self, item: Item, lifetime: float | None = None) -> str:
        """Pre-authenticated, expiring URL on the download origin (no bearer needed)."""
        now = time.time()
        claims = {
            "i": item.id,
            "d": item.drive.id,
            "t": now,
            "x": now + (lifetime or self.download_url_lifetime),
        }
        raw = (
            base64.urlsafe_b64encode(json.dumps(claims, separators=(",", ":")).encode()).decode().rstrip("=")
        )
        sig = hmac.new(self._download_secret, raw.encode(), hashlib.sha256).hexdigest()[:32]
        query = f"UniqueId={item.guid.lower()}&tempauth={raw}.{sig}"
        return f"{self.download_origin}/download/{quote(item.id)}?{query}"

    def _check_tempauth(self, tempauth: str | None, item_id: str) -> tuple[int, str] | None:
        with self._lock:
            if item_id in self.denied_downloads:
                return 403, "Access denied to this item's content."
        if not tempauth or "." not in tempauth:
            return 401, "Missing tempauth."
        raw, _, sig = tempauth.rpartition(".")
        good = hmac.new(self._download_secret, raw.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(sig, good):
            return 403, "Invalid tempauth signature."
        claims = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if claims.get("i") != item_id:
            return 403, "tempauth is for another item."
        now = time.time()
        with self._lock:
            valid_after = self._download_valid_after
        if claims["x"] <= now or claims["t"] < valid_after:
            return self.expired_download_status, "The download URL has expired."
        return None
