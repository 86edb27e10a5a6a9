"""Pre-authenticated downloads over the standard library: one keep-alive connection per thread.

Why not httpx here: profiling the 10 KB-file benchmark (bench/sharepoint/README.md) showed httpx's
shared connection pool costing ~500 us of CPU per small GET with 8 download threads (pool lock
hand-offs, a socket liveness poll before each reuse, URL re-parsing, response models): 3-4x what a
plain keep-alive `http.client` connection costs, and under the GIL that CPU was the ceiling of
the file case. Download URLs need none of httpx's features (no auth, no redirects, no cookies),
so this thin layer suffices. Failures are raised as `httpx.TransportError` subclasses, so the
retry policy in http.py is the same for both paths. http.py keeps httpx for downloads when a
test transport is injected or proxy environment variables are set (httpx honours them).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

_RECONNECT = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_MAX_HOSTS = 4  # connections kept per thread (download hosts are one per tenant in practice)


def transport_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception the retry policy already knows, for a stdlib failure."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return httpx.ReadTimeout(f"timed out: {exc}")
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return httpx.ConnectError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, http.client.IncompleteRead | http.client.RemoteDisconnected):
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}")
    return httpx.ReadError(f"{type(exc).__name__}: {exc}")


class RawResponse:
    """The part of `httpx.Response` that http.py uses for downloads, over `http.client`."""

    __slots__ = ("_body", "_conn", "_owner", "_resp", "headers", "reason_phrase", "status_code")

    def __init__(self, owner: StdlibDownloads, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._owner, self._conn, self._resp = owner, conn, resp
        self.status_code = resp.status
        self.reason_phrase = resp.reason
        self.headers = resp.headers  # case-insensitive .get()
        self._body: bytes | None = None

    def iter_bytes(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        resp = self._resp
        try:
            while True:
                chunk = resp.read(chunk_size)
                if not chunk:
                    break
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            self._owner.discard(self._conn)
            raise transport_error(exc) from exc
        if resp.length:  # fewer bytes than Content-Length: the peer closed mid-body
            self._owner.discard(self._conn)
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body "
                                            f"({resp.length} bytes missing)")

    def read(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.iter_bytes())
        return self._body

    def json(self) -> Any:
        return json.loads(self.read())

    def close(self) -> None:
        """Keep the connection only when the body was read to its end (else it is out of sync)."""
        resp = self._resp
        if resp.isclosed() or resp.length == 0:
            resp.close()
        else:
            self._owner.discard(self._conn)


class StdlibDownloads:
    """`open(url)` -> RawResponse, on this thread's keep-alive connection to the URL's origin."""

    def __init__(self, *, timeout: float, user_agent: str):
        self.timeout = timeout
        self.headers = {"User-Agent": user_agent}
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None

    def _connection(self, scheme: str, host: str, port: int | None) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, reused) for this thread."""
        conns: dict[tuple[str, str, int | None], http.client.HTTPConnection] | None = getattr(self._local, "c", None)
        if conns is None:
            conns = self._local.c = {}
        key = (scheme, host, port)
        conn = conns.get(key)
        if conn is not None:
            return conn, conn.sock is not None
        if len(conns) >= _MAX_HOSTS:
            self.discard(conns.pop(next(iter(conns))))
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # same CA bundle and verification as httpx
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        conns[key] = conn
        with self._lock:
            self._all.add(conn)
        return conn, False

    def discard(self, conn: http.client.HTTPConnection) -> None:
        """Close a connection whose state is unknown; the next request opens a fresh one."""
        conn.close()
        conns = getattr(self._local, "c", None)
        if conns:
            for key, value in list(conns.items()):
                if value is conn:
                    del conns[key]
        with self._lock:
            self._all.discard(conn)

    def open(self, url: str) -> RawResponse:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise httpx.UnsupportedProtocol(f"cannot download from a {parts.scheme or 'relative'} URL")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.isascii():
            target = httpx.URL(url).raw_path.decode("ascii")
        conn, reused = self._connection(parts.scheme, parts.hostname, parts.port)
        while True:
            try:
                conn.request("GET", target, headers=self.headers)
                return RawResponse(self, conn, conn.getresponse())
            except _RECONNECT as exc:
                # A kept-alive connection the server already closed: resend once on a fresh one
                # (GET is idempotent); a failure on a fresh connection is a real transport error.
                self.discard(conn)
                if not reused:
                    raise transport_error(exc) from exc
                conn, reused = self._connection(parts.scheme, parts.hostname, parts.port)
            except (OSError, http.client.HTTPException) as exc:
                self.discard(conn)
                raise transport_error(exc) from exc

    def close(self) -> None:
        with self._lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            conn.close()
