"""HTTP to Graph and to SharePoint's download host: auth, throttling, retries, no token leaks.

- Every request first waits for the connector-wide throttle gate (a Retry-After seen by any
  thread pauses all of them: retrying early prolongs throttling) and for the shared per-tenant
  rate limiter.
- 429/503/509: wait Retry-After (seconds or HTTP date); without it, capped exponential backoff
  with jitter. Other 5xx, empty 2xx bodies and transport errors: tenacity retries.
- 401 on Graph: drop the token, fetch a new one, retry once; a second 401 is a config error.
- The bearer only goes to the configured Graph origin and path; download URLs (pre-authenticated,
  `tempauth=`) are fetched without it and never logged, by an httpx transport called directly:
  the test's when one is injected, else transport.py's keep-alive one (measured faster, see
  there), or httpx's own when the environment names a proxy for the URL.
- The common case stays cheap: no lock when no throttle is pending, no limiter call when
  `max_requests_per_second` is unset, and the retry machinery is only built after a failure.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from kmrl_sync import __version__ as _version
from kmrl_sync.display import clipped
from kmrl_sync.engine.connector import ConnectorError

from .auth import TokenProvider
from .ratelimit import SharedRateLimiter
from .transport import KeepAliveTransport

USER_AGENT = f"ISV|KMRL|kmrl-sync/{_version}"
THROTTLE_STATUSES = (429, 503, 509)
TRANSIENT_STATUSES = (500, 502, 504)
#: a Graph JSON page (200 delta items are about 240 KB): more is not Graph, and is not held in memory
MAX_PAGE_BYTES = 32 << 20
#: how much of an error answer is read, and how much of what it says is kept (a server's text ends up
#: in exceptions, logs and the connector's last_error)
MAX_ERROR_BODY_BYTES = 64 << 10
MAX_ERROR_TEXT_CHARS = 1000
MAX_ERROR_CODES = 10


class StopRequested(Exception):
    """The run was asked to stop while waiting out a throttle window."""


class GraphError(Exception):
    """A non-retryable Graph answer (4xx other than 401/410/429)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ResyncRequired(GraphError):
    """410 Gone on a delta link: the cursor is dead; `location` starts a fresh full enumeration."""

    def __init__(self, code: str, message: str, location: str | None):
        super().__init__(410, code, message)
        self.location = location


class _Transient(Exception):
    """A retryable answer (5xx, empty body): raised inside one attempt, retried by tenacity."""


def redact(url: str) -> str:
    """Scheme, host and path only: queries carry delta tokens and download `tempauth`s."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def read_limited(resp: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the body, and whether there was more (the rest is left unread)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def error_of(resp: httpx.Response) -> tuple[str, str, list[str]]:
    """(code, message, all codes down the innerError chain) from a Graph error body.

    Reads at most MAX_ERROR_BODY_BYTES of it and keeps at most MAX_ERROR_TEXT_CHARS of the code and
    the message and MAX_ERROR_CODES codes: what a server says is data, bounded where it is parsed.
    """
    body, _ = read_limited(resp, MAX_ERROR_BODY_BYTES)
    fallback = f"http{resp.status_code}", clipped(resp.reason_phrase, MAX_ERROR_TEXT_CHARS), []
    try:
        err = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return fallback
    if not isinstance(err, dict):
        return clipped(str(err), MAX_ERROR_TEXT_CHARS), "", [clipped(str(err), MAX_ERROR_TEXT_CHARS)]
    codes: list[str] = []
    node: Any = err
    while isinstance(node, dict) and len(codes) < MAX_ERROR_CODES:
        if node.get("code"):
            codes.append(clipped(str(node["code"]), MAX_ERROR_TEXT_CHARS))
        node = node.get("innerError") or node.get("innererror")
    code = clipped(str(err.get("code") or f"http{resp.status_code}"), MAX_ERROR_TEXT_CHARS)
    return code, clipped(str(err.get("message") or ""), MAX_ERROR_TEXT_CHARS), codes


class GraphHttp:
    #: backoff when a throttle answer carries no Retry-After: base * 2^n, capped, jittered
    BACKOFF_BASE = 2.0
    BACKOFF_CAP = 60.0
    #: tenacity policy for 5xx / transport errors
    RETRY_ATTEMPTS = 6
    RETRY_INITIAL = 0.5
    RETRY_MAX = 30.0
    RETRY_AFTER_MARGIN = 0.05  # our clock and the server's round differently

    def __init__(self, graph_url: str, tokens: TokenProvider | None, *, timeout: float = 60.0,
                 limiter: SharedRateLimiter | None = None, log: Any = None,
                 should_stop: Callable[[], bool] = lambda: False, max_throttle_wait: float = 900.0,
                 transport: httpx.BaseTransport | None = None, pool_size: int = 8):
        self.graph_url = graph_url.rstrip("/")
        g = urlsplit(self.graph_url)
        self._graph_origin = (g.scheme, g.hostname, g.port)
        self._graph_path = g.path.rstrip("/") + "/"
        self.tokens = tokens
        self.limiter = limiter
        self.log = log
        self.should_stop = should_stop
        self.max_throttle_wait = max_throttle_wait
        self._limits = httpx.Limits(max_connections=pool_size + 2, max_keepalive_connections=pool_size + 2)
        timeouts = httpx.Timeout(timeout, connect=min(timeout, 30.0))
        self.client = httpx.Client(timeout=timeouts, limits=self._limits, follow_redirects=False,
                                   headers={"User-Agent": USER_AGENT}, transport=transport)
        # Downloads: an httpx transport called directly, no client (see transport.py for why), so
        # nothing (cookies, defaults, the bearer) is shared with the Graph client. The request
        # carries what a client would add: headers and httpx's timeout extension.
        self.downloads: httpx.BaseTransport = transport or KeepAliveTransport()
        self._download_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        self._download_extensions = {"timeout": timeouts.as_dict()}
        self._proxies = {k: v for k, v in getproxies().items() if k in ("http", "https", "all")}
        self._proxied: dict[str, httpx.HTTPTransport] = {}
        self._injected = transport is not None
        self._gate = threading.Lock()
        self._paused_until = 0.0
        self._consecutive_throttles = 0
        self.stats = {"graph": 0, "download": 0, "throttled": 0, "retried": 0, "reauth": 0}
        self._stats_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()
        self.downloads.close()
        for proxied in list(self._proxied.values()):
            proxied.close()
        close_tokens = getattr(self.tokens, "close", None)  # MSAL's http client
        if close_tokens is not None:
            close_tokens()

    # ------------------------------------------------------------------ policy helpers

    def is_graph(self, url: str) -> bool:
        p = urlsplit(url)
        return (p.scheme, p.hostname, p.port) == self._graph_origin and (p.path + "/").startswith(self._graph_path)

    def _download_transport(self, url: httpx.URL) -> httpx.BaseTransport:
        """httpx's own transport through the proxy the environment names for this URL (http.client
        reads no *_PROXY variables), else `downloads`. An injected (test) transport is always used."""
        if not self._proxies or self._injected:
            return self.downloads
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy is None or proxy_bypass(url.host):
            return self.downloads
        with self._gate:
            if proxy not in self._proxied:
                self._proxied[proxy] = httpx.HTTPTransport(proxy=proxy, limits=self._limits)
            return self._proxied[proxy]

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1

    def _wait_gate(self) -> None:
        if self._paused_until <= time.monotonic():  # no throttle pending: skip the lock (float read is atomic)
            return
        while True:
            with self._gate:
                left = self._paused_until - time.monotonic()
            if left <= 0:
                return
            if self.should_stop():
                raise StopRequested()
            time.sleep(min(left, 0.5))

    def pause(self, seconds: float) -> None:
        """Hold back every request of this connector (and, via Redis, of this tenant)."""
        with self._gate:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        if self.limiter is not None:
            self.limiter.pause(seconds)

    def _throttle_wait(self, resp: httpx.Response) -> float:
        seconds = retry_after_seconds(resp.headers.get("Retry-After"))
        with self._gate:
            n = self._consecutive_throttles
            self._consecutive_throttles += 1
        if seconds is not None:
            return seconds + self.RETRY_AFTER_MARGIN
        cap = min(self.BACKOFF_CAP, self.BACKOFF_BASE * (2 ** min(n, 16)))
        return cap / 2 + random.uniform(0, cap / 2)

    # ------------------------------------------------------------------ core

    def _send_once(self, method: str, url: str, *, auth: bool, headers: dict[str, str] | None = None,
                   stream: bool = False) -> Any:
        """Send until the answer is neither a throttle nor a first 401; 5xx raise _Transient."""
        waited = 0.0
        reauthed = False
        while True:
            self._wait_gate()
            if self.limiter is not None:
                self.limiter.acquire(self.should_stop)
            hdrs = dict(headers or {})
            token = ""
            if auth:
                if not self.is_graph(url):  # never hand the bearer to another host
                    raise ConnectorError(f"Graph returned a link outside graph_url: {redact(url)}")
                assert self.tokens is not None
                token = self.tokens.get_token()
                hdrs["Authorization"] = f"Bearer {token}"
            self._count("graph" if auth else "download")
            if auth:
                resp = self.client.send(self.client.build_request(method, url, headers=hdrs), stream=stream)
            else:
                request = httpx.Request(method, url, headers={**self._download_headers, **hdrs} if hdrs
                                        else self._download_headers,
                                        extensions=self._download_extensions)
                resp = self._download_transport(request.url).handle_request(request)
                resp.request = request  # what a client sets; a test transport's response may lack it
            status = resp.status_code
            if status in THROTTLE_STATUSES:
                wait = self._throttle_wait(resp)
                resp.close()
                self._count("throttled")
                waited += wait
                if waited > self.max_throttle_wait:
                    raise ConnectorError(f"Graph kept throttling for more than {self.max_throttle_wait:.0f} s "
                                         f"({status} on {redact(url)}); try again later or lower "
                                         "max_requests_per_second")
                if self.log is not None:
                    self.log.info("throttled by Graph", status=status, wait=round(wait, 2), url=redact(url))
                self.pause(wait)
                continue
            if self._consecutive_throttles:
                with self._gate:
                    self._consecutive_throttles = 0
            if status == 401 and auth:
                code, message, _ = error_of(resp)
                resp.close()
                if reauthed:
                    raise ConnectorError(f"Graph refused a fresh access token ({code}: {message}); check the "
                                         "app's API permissions (Sites.Read.All or Files.Read.All) and tenant")
                assert self.tokens is not None
                self.tokens.invalidate(token)
                self._count("reauth")
                reauthed = True
                continue
            if status in TRANSIENT_STATUSES:
                resp.close()
                raise _Transient(f"HTTP {status} on {redact(url)}")
            return resp

    def _retrying(self) -> Retrying:
        def before_sleep(state: Any) -> None:
            self._count("retried")
            if self.log is not None:
                exc = state.outcome.exception() if state.outcome else None
                self.log.info("retrying Graph request", attempt=state.attempt_number, error=str(exc))

        return Retrying(
            retry=retry_if_exception_type((httpx.TransportError, _Transient)),
            stop=stop_after_attempt(self.RETRY_ATTEMPTS),
            wait=wait_exponential_jitter(multiplier=self.RETRY_INITIAL, max=self.RETRY_MAX,
                                         jitter=self.RETRY_INITIAL),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _run(self, attempt: Callable[[], Any], what: str) -> Any:
        try:
            try:
                return attempt()  # the common case: no Retrying object (~25 us) per request
            except (httpx.TransportError, _Transient) as exc:
                failed: BaseException | None = exc

            def again() -> Any:
                """Tenacity's first attempt replays the failure above, so its count and waits are unchanged."""
                nonlocal failed
                if failed is not None:
                    first, failed = failed, None
                    raise first
                return attempt()

            for round_ in self._retrying():
                with round_:
                    return again()
        except _Transient as exc:
            raise ConnectorError(f"Graph keeps failing ({exc}) after {self.RETRY_ATTEMPTS} attempts") from None
        except httpx.TransportError as exc:
            raise ConnectorError(f"cannot reach {what}: {type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ Graph JSON

    def get_json(self, url: str) -> dict[str, Any]:
        """GET a Graph URL (absolute, or relative to graph_url) and return its JSON body.

        The body is streamed into bytes of our own, not read into the response: an httpx response
        and its bound stream refer to each other, so whatever the response holds lives until the
        cyclic collector runs, which can be long (issue 19 found it with the collector tuned to run
        rarely). Read by httpx, every delta page's body (about 1.2 KB per item) stayed until then,
        and peak memory grew with the library (127 MB for 50,000 files, 227 MB for 150,000). Now
        the cycle holds only the response's headers; the body goes when the page is applied.
        """
        if not url.startswith(("http://", "https://")):
            url = self.graph_url + "/" + url.lstrip("/")

        def attempt() -> dict[str, Any]:
            resp = self._send_once("GET", url, auth=True, stream=True)
            try:
                if resp.status_code >= 400:
                    if resp.status_code == 410:
                        code, message, codes = error_of(resp)
                        raise ResyncRequired("/".join(codes) or code, message, resp.headers.get("Location"))
                    code, message, _ = error_of(resp)
                    raise GraphError(resp.status_code, code, message)
                content, more = read_limited(resp, MAX_PAGE_BYTES)
                if more:
                    raise ConnectorError(f"Graph answered more than {MAX_PAGE_BYTES >> 20} MiB for one page "
                                         f"({redact(url)}); that is not a Graph page")
            finally:
                resp.close()
            try:
                body = json.loads(content)
            except ValueError:
                raise _Transient(f"empty or non-JSON body from {redact(url)}") from None
            if not isinstance(body, dict):
                raise _Transient(f"unexpected JSON from {redact(url)}")
            return body

        return self._run(attempt, f"Graph at {redact(self.graph_url)}")

    # ------------------------------------------------------------------ content

    @contextmanager
    def _open_download(self, url: str) -> Iterator[Any]:
        resp = self._send_once("GET", url, auth=False, stream=True)
        try:
            yield resp
        finally:
            resp.close()

    def download(self, content_url: str, download_url: str | None,
                 consume: Callable[[Iterator[bytes]], Any]) -> Any:
        """Fetch a file's bytes and hand the chunk stream to `consume` (returns its result).

        `download_url` (the delta item's pre-authenticated URL) is used when given; when it has
        expired (401/403/404/410) we ask `/content` for a fresh one (302 to the download host).
        Raises GraphError(403/404) for an item we may not or can no longer read.
        """
        state = {"url": download_url}

        def attempt() -> Any:
            url = state["url"]
            if url is not None:
                with self._open_download(url) as resp:
                    if resp.status_code == 200:
                        return consume(resp.iter_bytes(1 << 16))
                    if resp.status_code not in (401, 403, 404, 410):
                        raise _Transient(f"download host answered HTTP {resp.status_code}")
                state["url"] = None  # expired pre-authenticated URL: ask Graph again
            resp = self._send_once("GET", content_url, auth=True, stream=True)
            try:
                if resp.status_code in (301, 302, 303, 307, 308):
                    location = resp.headers.get("Location")
                    if not location:
                        raise _Transient("redirect without Location from /content")
                    location = str(resp.url.join(location))
                else:
                    location = None
                    if resp.status_code == 200:
                        return consume(resp.iter_bytes(1 << 16))
                    code, message, _ = error_of(resp)
                    raise GraphError(resp.status_code, code, message)
            finally:
                resp.close()
            with self._open_download(location) as dl:
                if dl.status_code == 200:
                    return consume(dl.iter_bytes(1 << 16))
                code, message, _ = error_of(dl)
                if dl.status_code in (403, 404):
                    raise GraphError(dl.status_code, code, message)
                raise _Transient(f"download host answered HTTP {dl.status_code} ({code})")

        return self._run(attempt, "the SharePoint download host")
