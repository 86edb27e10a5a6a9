"""Entra ID client-credentials flow, as far as a Graph client can observe it.

Access tokens are JWT-shaped (so code that peeks at them does not crash) but are
validated by lookup, never by signature: clients must treat them as opaque.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


@dataclass
class TokenError(Exception):
    """An OAuth error answer: HTTP status + the AAD JSON body."""

    status: int
    body: dict[str, Any]


class TokenIssuer:
    """Checks client credentials, issues bearer tokens and validates them later."""

    def __init__(self, tenant_id: str, client_id: str, client_secret: str) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = 3599
        self.issued_count = 0
        self._tokens: dict[str, float] = {}
        self._revoked: list[str] = []
        self._lock = threading.Lock()

    def issue(self, lifetime: float | None = None) -> tuple[str, int]:
        """A new access token and its ``expires_in``."""
        life = self.token_lifetime if lifetime is None else lifetime
        now = time.time()
        claims = {
            "aud": "https://graph.microsoft.com",
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "appid": self.client_id,
            "tid": self.tenant_id,
            "roles": ["Sites.Read.All", "Files.Read.All"],
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now + life),
            "uti": secrets.token_hex(8),
        }
        token = ".".join(
            [
                _b64url(b'{"typ":"JWT","alg":"RS256","kid":"fake"}'),
                _b64url(json.dumps(claims).encode()),
                _b64url(secrets.token_bytes(32)),
            ]
        )
        with self._lock:
            self._tokens[token] = now + life
            self.issued_count += 1
        return token, int(life)

    def issued(self) -> list[str]:
        """Every token issued so far (revoked ones included)."""
        with self._lock:
            return [*self._tokens, *self._revoked]

    def revoke_all(self) -> None:
        with self._lock:
            self._revoked += self._tokens
            self._tokens.clear()

    def check_bearer(self, header: str | None) -> str | None:
        """None when valid, else the 401 message Graph would give."""
        if not header:
            return "Access token is empty."
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "Access token is empty."
        with self._lock:
            expiry = self._tokens.get(token.strip())
        if expiry is None:
            return "Invalid token: signature validation failed."
        if expiry <= time.time():
            return "Access token has expired or is not yet valid."
        return None

    def token_response(self, tenant: str, form: dict[str, str]) -> dict[str, Any]:
        """Answer ``POST /{tenant}/oauth2/v2.0/token``; raises TokenError."""
        if tenant not in (self.tenant_id,):
            raise self._error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            raise self._error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if form.get("client_id") != self.client_id:
            raise self._error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found.",
            )
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            raise self._error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
        if "client_assertion" in form:
            raise self._error(400, "invalid_client", 700027, "Client assertion failed signature validation.")
        if form.get("client_secret") != self.client_secret:
            raise self._error(400, "invalid_client", 7000215, "Invalid client secret provided.")
        token, expires_in = self.issue()
        return {
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }

    @staticmethod
    def _error(status: int, error: str, code: int, text: str) -> TokenError:
        trace = str(uuid.uuid4())
        return TokenError(
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {text} Trace ID: {trace}",
                "error_codes": [code],
                "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                "trace_id": trace,
                "correlation_id": str(uuid.uuid4()),
            },
        )

    def openid_configuration(self, authority_url: str, tenant: str) -> dict[str, Any]:
        """Just enough OIDC metadata for MSAL's authority validation.

        ``authority_url`` is the https origin the client asked for: MSAL rejects non-https
        endpoints; the connector sends an http:// authority's requests over plain HTTP.
        """
        base = f"{authority_url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "jwks_uri": f"{authority_url}/{tenant}/discovery/v2.0/keys",
            "issuer": f"https://login.microsoftonline.com/{self.tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
        }
