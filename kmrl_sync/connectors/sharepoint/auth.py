"""Access tokens for Graph (OAuth2 client credentials, app-only), behind one small interface.

Production uses MSAL's ConfidentialClientApplication (secret or certificate): it owns the token
cache, early refresh and the authority metadata dance. MSAL refuses a plain-http authority, so
when `authority_url` is `http://` (the local fake Graph in tests) the same interface is served
by a direct form POST to `{authority}/{tenant}/oauth2/v2.0/token`. Both cache the token until
shortly before it expires and can be told to drop it (after a 401).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Protocol

import httpx

from kmrl_sync.connectors.base import ConnectorError

from .options import SharePointOptions

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EARLY_REFRESH = 300.0  # renew this long before expiry (MSAL's own rule), or at half-life for short tokens


class TokenProvider(Protocol):
    def get_token(self) -> str:
        """A valid bearer token; cheap when cached."""
        ...

    def invalidate(self, token: str) -> None:
        """The server refused `token` (401): never hand it out again."""
        ...


def _scope(graph_url: str) -> str:
    """`https://graph.microsoft.com/.default`, or the sovereign cloud's own resource."""
    from urllib.parse import urlsplit

    parts = urlsplit(graph_url)
    if parts.scheme == "https":
        return f"https://{parts.netloc}/.default"
    return GRAPH_SCOPE


def _describe(body: dict, tenant: str, client_id: str) -> str:
    """An operator-facing message from an AAD error body (codes + description, never the secret)."""
    error = body.get("error") or "error"
    desc = str(body.get("error_description") or "").split(" Trace ID:")[0].strip()
    return f"Entra ID refused a token for client {client_id} in tenant {tenant}: {error}: {desc}"


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token: str | None = None
        self.renew_at = 0.0

    def valid(self) -> str | None:
        if self.token is not None and time.monotonic() < self.renew_at:
            return self.token
        return None

    def store(self, token: str, expires_in: float) -> None:
        margin = min(EARLY_REFRESH, expires_in / 2)
        self.token, self.renew_at = token, time.monotonic() + max(0.0, expires_in - margin)

    def drop(self, token: str) -> None:
        if self.token == token:
            self.token, self.renew_at = None, 0.0


class FormTokenProvider:
    """Client credentials by hand: one POST, for http:// authorities (tests, private clouds)."""

    def __init__(self, options: SharePointOptions, client: httpx.Client):
        self.options = options
        self.client = client
        self.url = f"{options.authority_url}/{options.tenant_id}/oauth2/v2.0/token"
        self.cache = _Cache()

    def _form(self) -> dict[str, str]:
        o = self.options
        form = {"grant_type": "client_credentials", "client_id": o.client_id, "scope": _scope(o.graph_url)}
        if o.certificate is not None:
            form["client_assertion_type"] = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            form["client_assertion"] = client_assertion(o, self.url)
        else:
            secret = o.secret
            assert secret is not None  # options validation guarantees one credential
            form["client_secret"] = secret.get_secret_value()
        return form

    def get_token(self) -> str:
        with self.cache.lock:
            token = self.cache.valid()
            if token is not None:
                return token
            try:
                resp = self.client.post(self.url, data=self._form())
            except httpx.HTTPError as exc:
                raise ConnectorError(f"cannot reach the token endpoint {self.url}: {exc}") from None
            try:
                body = resp.json()
            except ValueError:
                body = {}
            if resp.status_code != 200 or "access_token" not in body:
                if body.get("error"):
                    raise ConnectorError(_describe(body, self.options.tenant_id, self.options.client_id))
                raise ConnectorError(f"token endpoint {self.url} answered HTTP {resp.status_code}")
            self.cache.store(body["access_token"], float(body.get("expires_in") or 3599))
            return body["access_token"]

    def invalidate(self, token: str) -> None:
        with self.cache.lock:
            self.cache.drop(token)


def client_assertion(options: SharePointOptions, audience: str) -> str:
    """The signed JWT that proves possession of the certificate's key (RFC 7523)."""
    import base64

    import jwt

    cert = options.certificate
    assert cert is not None
    key = cert.key_file.read_bytes()
    now = int(time.time())
    x5t = base64.urlsafe_b64encode(bytes.fromhex(cert.thumbprint)).decode().rstrip("=")
    claims = {"aud": audience, "iss": options.client_id, "sub": options.client_id,
              "jti": str(uuid.uuid4()), "nbf": now, "exp": now + 600}
    return jwt.encode(claims, key, algorithm="RS256", headers={"x5t": x5t})


class MsalTokenProvider:
    """Production: MSAL owns caching and early refresh; we keep ONE app per connector."""

    def __init__(self, options: SharePointOptions, http_client: object | None = None):
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
                options.client_id, authority=f"{options.authority_url}/{options.tenant_id}",
                client_credential=credential, **({"http_client": http_client} if http_client else {}))
        except ValueError as exc:  # bad authority, unreadable key, ...
            raise ConnectorError(f"cannot set up Entra ID authentication: {exc}") from None
        except Exception as exc:  # MSAL raises requests errors when the authority is unreachable
            raise ConnectorError(f"cannot reach the Entra ID authority {options.authority_url}: "
                                 f"{type(exc).__name__}") from None
        self.lock = threading.Lock()
        self.scopes = [_scope(options.graph_url)]

    def get_token(self) -> str:
        with self.lock:
            try:
                result = self.app.acquire_token_for_client(scopes=self.scopes)
            except Exception as exc:
                raise ConnectorError(f"cannot reach the Entra ID authority {self.options.authority_url}: "
                                     f"{type(exc).__name__}") from None
        if not result or "access_token" not in result:
            raise ConnectorError(_describe(result or {}, self.options.tenant_id, self.options.client_id))
        return result["access_token"]

    def invalidate(self, token: str) -> None:
        with self.lock:
            self.app.remove_tokens_for_client()


def make_token_provider(options: SharePointOptions, client: httpx.Client) -> TokenProvider:
    if options.authority_url.startswith("http://"):
        return FormTokenProvider(options, client)
    return MsalTokenProvider(options)
