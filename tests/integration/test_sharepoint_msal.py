"""The production token path: real MSAL (client credentials) against the Graph test server.

The connector's own `make_token_provider` is used as configured (an http:// authority_url on
loopback): everything MSAL does is real (authority metadata, the token POST, its cache), over the
httpx client production uses.
"""

from __future__ import annotations

import httpx
import pytest

from kmrl_sync.connectors.sharepoint.auth import make_token_provider
from kmrl_sync.connectors.sharepoint.options import SharePointOptions
from kmrl_sync.engine.connector import ConnectorError
from tests.support.graph_server import FakeGraph

TENANT, CLIENT, SECRET = "tenant-msal", "client-msal", "msal-secret-value"


def options(graph: FakeGraph, secret: str = SECRET) -> SharePointOptions:
    return SharePointOptions.model_validate({
        "tenant_id": TENANT, "client_id": CLIENT, "client_secret": secret,
        "site_url": "https://kmrl.sharepoint.com/sites/Engineering",
        "graph_url": graph.graph_url, "authority_url": graph.authority_url,
    })


@pytest.fixture
def graph():
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as g:
        g.add_site()
        yield g


def test_msal_token_is_accepted_cached_and_refreshed_after_invalidate(graph):
    provider = make_token_provider(options(graph))
    token = provider.get_token()
    response = httpx.get(f"{graph.graph_url}/sites/kmrl.sharepoint.com:/sites/Engineering",
                         headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    issued = graph.tokens_issued
    assert provider.get_token() == token and graph.tokens_issued == issued  # served from MSAL's cache
    provider.invalidate(token)
    assert provider.get_token() != token and graph.tokens_issued == issued + 1
    assert {r.origin for r in graph.requests} == {"authority", "graph"}  # nothing went elsewhere
    provider.close()


def test_msal_refusal_is_a_clear_error_without_the_secret(graph):
    provider = make_token_provider(options(graph, secret="not-the-secret"))
    with pytest.raises(ConnectorError) as err:
        provider.get_token()
    provider.close()
    assert "invalid_client" in str(err.value) and "not-the-secret" not in str(err.value)
