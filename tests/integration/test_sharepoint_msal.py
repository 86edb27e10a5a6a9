"""The production token path: real MSAL (client credentials) against the local Entra/Graph fake.

MSAL insists on an https authority, so the fake hands MSAL an `http_client` that routes
login.microsoftonline.com to it (tests/support/graph); everything MSAL does is real: discovery,
the token POST, its cache.
"""

from __future__ import annotations

import httpx
import pytest

from kmrl_sync.connectors.base import ConnectorError
from kmrl_sync.connectors.sharepoint.auth import MsalTokenProvider
from kmrl_sync.connectors.sharepoint.options import SharePointOptions
from tests.support.graph_server import FakeGraph

TENANT, CLIENT, SECRET = "tenant-msal", "client-msal", "msal-secret-value"


def options(graph: FakeGraph, secret: str = SECRET) -> SharePointOptions:
    return SharePointOptions.model_validate({
        "tenant_id": TENANT, "client_id": CLIENT, "client_secret": secret,
        "site_url": "https://kmrl.sharepoint.com/sites/Engineering",
        "graph_url": graph.graph_url, "authority_url": "https://login.microsoftonline.com",
    })


@pytest.fixture
def graph():
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as g:
        g.add_site()
        yield g


def test_msal_token_is_accepted_cached_and_refreshed_after_invalidate(graph):
    provider = MsalTokenProvider(options(graph), http_client=graph.msal_http_client())
    token = provider.get_token()
    response = httpx.get(f"{graph.graph_url}/sites/kmrl.sharepoint.com:/sites/Engineering",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    issued = graph.tokens_issued
    assert provider.get_token() == token and graph.tokens_issued == issued  # served from MSAL's cache
    provider.invalidate(token)
    assert provider.get_token() != token and graph.tokens_issued == issued + 1


def test_msal_refusal_is_a_clear_error_without_the_secret(graph):
    provider = MsalTokenProvider(options(graph, secret="not-the-secret"), http_client=graph.msal_http_client())
    with pytest.raises(ConnectorError) as err:
        provider.get_token()
    assert "invalid_client" in str(err.value) and "not-the-secret" not in str(err.value)
