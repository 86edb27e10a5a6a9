"""Access tokens for Graph (OAuth2 client credentials, app-only) through MSAL, in production and tests.

MSAL's ConfidentialClientApplication (secret or certificate) owns the token cache, early refresh
and the authority metadata; its HTTP goes through an httpx client of ours (`http_client=`), so the
tests drive the same code against the Graph test server's token endpoint on loopback.

MSAL accepts only `https://` authorities. An `http://` `authority_url` (the Graph test server, a
private authority behind a TLS-terminating proxy) is handed to MSAL as `https://` on the same host
and port, and the httpx client sends that one origin over plain HTTP (`_PlainHttp`): the
configured URL is what goes on the wire. MSAL's instance discovery (a call to
login.microsoftonline.com asking whether the authority host is Microsoft's) is off: the
authority is trusted as configured, and the well-known Entra hosts never used it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from kmrl_sync import redaction
from kmrl_sync.engine.connector import ConnectorError

from .options import SharePointOptions

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class TokenProvider(Protocol):
    def get_token(self) -> str:
        """A valid bearer token; cheap when cached."""
        ...

    def invalidate(self, token: str) -> None:
        """The server refused `token` (401): never hand it out again."""
        ...


def _scope(graph_url: str) -> str:
    """`https://graph.microsoft.com/.default`, or the sovereign cloud's own resource."""
    parts = urlsplit(graph_url)
    if parts.scheme == "https":
        return f"https://{parts.netloc}/.default"
    return GRAPH_SCOPE


def _describe(body: dict, tenant: str, client_id: str) -> str:
    """An operator-facing message from an AAD error body (codes + description, never the secret)."""
    error = body.get("error") or "error"
    desc = str(body.get("error_description") or "").split(" Trace ID:")[0].strip()
    return f"Entra ID refused a token for client {client_id} in tenant {tenant}: {error}: {desc}"


class _PlainHttp(httpx.BaseTransport):
    """Sends an `https://` request over plain HTTP: MSAL's view of an `http://` authority."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def msal_authority(options: SharePointOptions) -> str:
    """The authority URL MSAL is given: `authority_url/tenant`, with `https` for an `http` one."""
    parts = urlsplit(options.authority_url)
    base = f"https://{parts.netloc}{parts.path}" if parts.scheme == "http" else options.authority_url
    return f"{base.rstrip('/')}/{options.tenant_id}"


def msal_http_client(options: SharePointOptions, *, timeout: float = 30.0, user_agent: str | None = None,
                     transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The httpx client MSAL talks through (`transport`: a test's, else httpx's default).

    For an `http://` authority_url, its origin (as MSAL sees it, https) is sent over plain HTTP.
    """
    parts = urlsplit(options.authority_url)
    mounts: dict[str, httpx.BaseTransport] = {}
    if parts.scheme == "http":
        mounts[f"https://{parts.netloc}"] = _PlainHttp(transport or httpx.HTTPTransport())
    return httpx.Client(timeout=timeout, follow_redirects=False, transport=transport, mounts=mounts,
                        headers={"User-Agent": user_agent} if user_agent else None)


class MsalTokenProvider:
    """MSAL owns caching and early refresh; we keep ONE app per connector."""

    def __init__(self, options: SharePointOptions, http_client: httpx.Client):
        import msal

        self.options = options
        if options.certificate is not None:
            credential: object = {"private_key": options.certificate.key_file.read_text(),
                                  "thumbprint": options.certificate.thumbprint}
        else:
            secret = options.secret
            assert secret is not None
            credential = secret.get_secret_value()
        try:
            self.app = msal.ConfidentialClientApplication(
                options.client_id, authority=msal_authority(options), client_credential=credential,
                http_client=http_client, instance_discovery=False)
        except ValueError as exc:  # bad authority, unreadable key, ...
            raise ConnectorError(f"cannot set up Entra ID authentication: {exc}") from None
        except Exception as exc:  # MSAL passes on the http_client's errors when the authority is unreachable
            raise ConnectorError(f"cannot reach the Entra ID authority {options.authority_url}: "
                                 f"{type(exc).__name__}") from None
        self.http_client = http_client
        self.lock = threading.Lock()
        self.scopes = [_scope(options.graph_url)]
        # The tokens handed out lately, registered as secrets: the current one and the one before
        # (a request sent with it may still fail and be reported). Older ones are forgotten, so the
        # registry does not grow by a token an hour for as long as the daemon runs.
        self._registered: deque[str] = deque()

    def close(self) -> None:
        self.http_client.close()

    def get_token(self) -> str:
        with self.lock:
            try:
                result = self.app.acquire_token_for_client(scopes=self.scopes)
            except Exception as exc:
                raise ConnectorError(f"cannot reach the Entra ID authority {self.options.authority_url}: "
                                     f"{type(exc).__name__}") from None
        if not result or "access_token" not in result:
            raise ConnectorError(_describe(result or {}, self.options.tenant_id, self.options.client_id))
        token = result["access_token"]
        self._remember(token)
        return token

    def _remember(self, token: str) -> None:
        with self.lock:
            if token in self._registered:
                return
            redaction.register(token, "Graph access token")
            self._registered.append(token)
            if len(self._registered) > 2:
                redaction.forget(self._registered.popleft())

    def invalidate(self, token: str) -> None:
        with self.lock:
            self.app.remove_tokens_for_client()


def make_token_provider(options: SharePointOptions, *, user_agent: str | None = None,
                        transport: httpx.BaseTransport | None = None) -> MsalTokenProvider:
    """The connector's token source: MSAL over `msal_http_client` (`transport` for tests)."""
    client = msal_http_client(options, timeout=min(options.timeout, 30.0), user_agent=user_agent,
                              transport=transport)
    return MsalTokenProvider(options, client)
