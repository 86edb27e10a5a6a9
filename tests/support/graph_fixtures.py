"""Pytest fixtures around :class:`tests.support.graph_server.FakeGraph`, registered in tests/conftest.py.

* ``graph`` (function): a fresh fake Graph (with its Entra ID authority and download host) for the
  tenant and app credentials below.
* ``drive``: on it, the site https://kmrl.sharepoint.com/sites/Engineering with two document
  libraries, "Other" and "Shared Documents" (the one returned).

A test module that needs another Graph defines its own ``graph`` fixture, which takes precedence.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.graph_server import FakeGraph

TENANT, CLIENT, SECRET = "tenant-kmrl", "client-kmrl", "s3cret-value-42"
SITE = "https://kmrl.sharepoint.com/sites/Engineering"


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as g:
        yield g


@pytest.fixture
def drive(graph: FakeGraph):
    site = graph.add_site(hostname="kmrl.sharepoint.com", path="/sites/Engineering")
    site.add_drive(name="Other", web_url_name="Other")
    return site.add_drive(name="Documents", web_url_name="Shared Documents")
