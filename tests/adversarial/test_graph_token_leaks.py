"""Graph access tokens are secrets too: issued by Entra ID at run time, never in a file.

The attack: a Graph server (or a proxy in front of it) that quotes the refused request's
Authorization header in its error text. That text becomes the run's error, so it reaches the logs,
the CLI's output and the connector's stats in Redis. MSAL hands the token to the connector, which
registers it with the redaction registry; only the latest two tokens are kept registered, so a
daemon running for months does not scrub an ever-growing list.
"""

from __future__ import annotations

import json

from kmrl_sync import redaction
from kmrl_sync.connectors.sharepoint.auth import make_token_provider
from kmrl_sync.connectors.sharepoint.options import SharePointOptions
from tests.adversarial.test_secret_leaks import assert_clean, dump_redis
from tests.support.graph_server import FakeGraph

TENANT, CLIENT, SECRET = "tenant-leak", "client-leak", "leak-test-client-secret"


def _library(project, graph: FakeGraph) -> None:
    """An empty document library on the fake Graph, and the connector `sp` syncing it."""
    site = graph.add_site(hostname="kmrl.sharepoint.com", path="/sites/Engineering")
    site.add_drive(name="Documents", web_url_name="Shared Documents")
    project.write_main()
    project.connector("sp", (
        f"type: sharepoint\nschedule: {{every: 10m}}\noptions:\n  tenant_id: {TENANT}\n"
        f"  client_id: {CLIENT}\n  client_secret: {SECRET}\n"
        f"  site_url: https://kmrl.sharepoint.com/sites/Engineering\n  library: Shared Documents\n"
        f"  graph_url: {graph.graph_url}\n  authority_url: {graph.authority_url}\n"))


def test_a_server_echoing_the_bearer_token_cannot_leak_it(project, redis_client) -> None:
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as graph:
        _library(project, graph)
        graph.echo_authorization_once()
        result = project.cli("sync", "sp", "--json")
        status = project.cli("status", "sp", "--json")
        tokens = graph.issued_tokens
    assert tokens, "the run never got a token"
    assert result.returncode == 1, result.stdout + result.stderr
    stats = json.loads(status.stdout)["connectors"][0]
    assert "Malformed request: Authorization: Bearer ***" in stats["last_error"]  # the server's text, scrubbed
    for where, text in (("sync stdout", result.stdout), ("sync stderr", result.stderr),
                        ("status", status.stdout), ("redis", dump_redis(redis_client, set()))):
        assert_clean(where, text, [*tokens, SECRET])


def test_only_the_latest_tokens_stay_registered() -> None:
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as graph:
        graph.add_site()
        provider = make_token_provider(SharePointOptions.model_validate({
            "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
            "site_url": "https://kmrl.sharepoint.com/sites/Engineering",
            "graph_url": graph.graph_url, "authority_url": graph.authority_url}))
        tokens = []
        for _ in range(5):
            tokens.append(provider.get_token())
            provider.invalidate(tokens[-1])
        provider.close()
    assert len(set(tokens)) == 5
    current, previous, *older = reversed(tokens)
    assert redaction.redact(f"a {current} b {previous}") == "a *** b ***"
    assert all(redaction.redact(token) == token for token in older)  # forgotten, not kept forever


def test_a_server_answering_pages_of_error_text_is_kept_to_a_line(project, redis_client) -> None:
    """A Graph error's text reaches exceptions, logs, the CLI and last_error: bounded on the way in."""
    wordy = "\x1b[31m" + "the server explains at length " * 700  # 21,000 characters, a 21 KB body
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as graph:
        _library(project, graph)
        graph.wordy_error_once(wordy)
        result = project.cli("sync", "sp", "--json")
        status = project.cli("status", "sp", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    last_error = json.loads(status.stdout)["connectors"][0]["last_error"]
    assert "invalidRequest" in last_error and "the server explains at length" in last_error
    assert len(last_error) <= 500 and last_error.endswith("\u2026")
    assert len(result.stdout) + len(result.stderr) < 6000, result.stdout + result.stderr
    assert "\x1b" not in result.stdout + result.stderr
