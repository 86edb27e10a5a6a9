"""Let real MSAL talk to the fake authority.

MSAL only accepts ``https://`` authorities and takes the token endpoint from the
openid-configuration (which, as on Entra ID, names login.microsoftonline.com). This
``http_client`` for ``ConfidentialClientApplication(..., http_client=...)`` rewrites
those URLs to the fake's plain-HTTP origin, so the production MSAL code path runs
unchanged in tests.
"""

from __future__ import annotations

from typing import Any

import httpx

PUBLIC_AUTHORITY = "https://login.microsoftonline.com"


class RewritingHttpClient:
    """Minimal MSAL ``http_client`` (``post``/``get``/``close``) backed by httpx."""

    def __init__(self, authority_url: str, timeout: float = 10.0) -> None:
        self.authority_url = authority_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout)

    def _url(self, url: str) -> str:
        return self.authority_url + url[len(PUBLIC_AUTHORITY) :] if url.startswith(PUBLIC_AUTHORITY) else url

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **_: Any
    ) -> httpx.Response:
        return self._client.post(self._url(url), params=params, data=data, headers=headers)

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> httpx.Response:
        return self._client.get(self._url(url), params=params, headers=headers)

    def close(self) -> None:
        self._client.close()
