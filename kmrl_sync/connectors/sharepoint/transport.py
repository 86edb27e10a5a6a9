"""An httpx transport for pre-authenticated downloads: one keep-alive `http.client` connection per thread.

Downloads go through httpx's transport interface (`BaseTransport.handle_request`, the seam the
tests use to inject theirs), called directly by http.py rather than through an `httpx.Client`:
download URLs need none of the client's features (no auth, cookies, redirects or default
headers), and on the 10 KB-file benchmark (bench/sharepoint) the CPU per GET is what limits a
library of small files (the process holds the GIL). Measured per 10 KB GET with 8 download
threads against the local Graph server, 2026-12-07 (bench/sharepoint/README.md):

- `httpx.Client` with its default transport, as the bare-client baseline uses it: ~760-800 us;
- httpx's `HTTPTransport` called directly: ~580-600 us (httpcore's pool and h11);
- this transport through an `httpx.Client`: ~410 us (the client layer: ~120 us);
- this transport called directly: ~250-300 us, of which httpx's URL validation is ~35 us.

So this module is here because it is measured faster: through a client, the connector's content
sync reached 0.56x the bare httpx client (issue 16's last session). Failures are raised as the
`httpx.TransportError` subclasses httpx's own transport raises, so the retry policy is one.
Proxies: http.client does not read `*_PROXY`; http.py sends a download to httpx's own
`HTTPTransport` when the environment names a proxy for its URL.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import httpx

_RECONNECT = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
_MAX_HOSTS = 4  # connections kept per thread (download hosts are one per tenant in practice)
_CHUNK = 1 << 16
_Key = tuple[str, str, int | None]


def transport_error(exc: BaseException) -> httpx.TransportError:
    """The httpx exception its own transport raises for the same failure."""
    if isinstance(exc, socket.timeout | TimeoutError):
        return httpx.ReadTimeout(f"timed out: {exc}")
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return httpx.ConnectError(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, http.client.IncompleteRead | http.client.RemoteDisconnected):
        return httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}")
    return httpx.ReadError(f"{type(exc).__name__}: {exc}")


class _Body(httpx.SyncByteStream):
    """A response body read from its connection; the connection is kept only when read to its end."""

    def __init__(self, owner: KeepAliveTransport, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse):
        self._owner, self._conn, self._resp = owner, conn, resp

    def __iter__(self) -> Iterator[bytes]:
        resp = self._resp
        try:
            while chunk := resp.read(_CHUNK):
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            self._owner.discard(self._conn)
            raise transport_error(exc) from exc
        if resp.length:  # fewer bytes than Content-Length: the peer closed mid-body
            self._owner.discard(self._conn)
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body "
                                            f"({resp.length} bytes missing)")

    def close(self) -> None:
        resp = self._resp
        if resp.isclosed() or resp.length == 0:
            resp.close()
        else:  # the body was not read to its end: the connection is out of step
            self._owner.discard(self._conn)


class KeepAliveTransport(httpx.BaseTransport):
    """HTTP/1.1 over `http.client`, one keep-alive connection per (thread, origin).

    Sends the request's own headers and nothing else (httpx puts `Host` in every request); one
    timeout, the request's read timeout (httpx's `timeout` extension), for connect and reads.
    A kept-alive connection the server already closed is replaced and the request resent once
    (downloads are GETs); any other failure is an `httpx.TransportError`.
    """

    def __init__(self, *, ssl_context: object | None = None) -> None:
        self._local = threading.local()
        self._all: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._ssl = ssl_context

    def _connection(self, key: _Key, timeout: float | None) -> tuple[http.client.HTTPConnection, bool]:
        """(connection, reused) for this thread."""
        conns: dict[_Key, http.client.HTTPConnection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(key)
        if conn is not None:
            return conn, conn.sock is not None
        if len(conns) >= _MAX_HOSTS:
            self.discard(conns[next(iter(conns))])
        scheme, host, port = key
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # the CA bundle and verification httpx uses
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)  # type: ignore[arg-type]
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conns[key] = conn
        with self._lock:
            self._all.add(conn)
        return conn, False

    def discard(self, conn: http.client.HTTPConnection) -> None:
        """Close a connection whose state is unknown; the next request opens a fresh one."""
        conn.close()
        conns = getattr(self._local, "conns", None)
        if conns:
            for key, value in list(conns.items()):
                if value is conn:
                    del conns[key]
        with self._lock:
            self._all.discard(conn)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https") or not url.host:
            raise httpx.UnsupportedProtocol(f"cannot download from a {url.scheme or 'relative'} URL")
        timeout = request.extensions.get("timeout", {}).get("read")
        key = (url.scheme, url.host, url.port)
        target = url.raw_path.decode("ascii")
        body = request.read() or None
        conn, reused = self._connection(key, timeout)
        while True:
            try:
                conn.putrequest(request.method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers.raw:
                    conn.putheader(name, value)
                conn.endheaders(body)
                resp = conn.getresponse()
                break
            except _RECONNECT as exc:
                # A kept-alive connection the server already closed: resend once on a fresh one;
                # a failure on a fresh connection is a real transport error.
                self.discard(conn)
                if not reused:
                    raise transport_error(exc) from exc
                conn, reused = self._connection(key, timeout)
            except (OSError, http.client.HTTPException) as exc:
                self.discard(conn)
                raise transport_error(exc) from exc
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.getheaders()]
        return httpx.Response(resp.status, headers=headers, stream=_Body(self, conn, resp), request=request,
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": resp.reason.encode("latin-1")})

    def close(self) -> None:
        with self._lock:
            conns, self._all = list(self._all), set()
        for conn in conns:
            conn.close()
