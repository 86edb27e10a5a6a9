"""Tests of the local fake Microsoft Graph server itself (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.graph_server import FakeGraph, QuickXorHash, quickxor_b64

TENANT, CLIENT, SECRET = "tenant-1", "client-1", "s3cret"
FULL_SELECT = (
    "id,name,eTag,cTag,size,file,folder,package,root,deleted,parentReference,"
    "createdDateTime,lastModifiedDateTime,webUrl,content.downloadUrl"
)

# (input base64, quickXorHash) pairs: the note's vectors plus some from rclone's test table.
QXH_VECTORS = [
    ("", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ("Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
    (base64.b64encode(b"abc").decode(), "YRDDGAAAAAAAAAAAAwAAAAAAAAA="),
    (base64.b64encode(b"hello world").decode(), "aCgDG9jwBhDc4Q1yawMZAAAAAAA="),
    ("tbQ=", "taAFAAAAAAAAAAAAAgAAAAAAAAA="),
    ("J9iPGCbfZSTNyw==", "J8DGIzBggm+UgQTNUgYAAAAAAAA="),
    ("2fuxhBJXtpWFe8dOfdGeHw==", "O9tHLAghgSvYohKFyMMxnNCHaHg="),
    ("T6LYJIfDh81JrAK309H2JMJTXis=", "zBTHrspn3mEcohlJdIUAbjGNaNg="),
    (
        "Mb7EGva2rEE5fENDL85P+BsapHEEjv2/siVhKjvAQe02feExVOQSkfmuYzU/kTF1MaKjPmKF/w+cbvwfdWL8aQ==",
        "n1anP5NfvD4XDYWIeRPW3ZkPv1Y=",
    ),
    (
        "qwGf2ESubE5jOUHHyc94ORczFYYbc2OmEzo+hBIyzJiNwAzC8PvJqtTzwkWkSslgHFGWQZR2BV5+"
        "uYTrYT7HVwRM40vqfj0dBgeDENyTenIOL1LHkjtDKoXEnQ0mXAHoJ8PjbNC93zi5TovVRXTNzfGE"
        "s5dpWVqxUzb5lc7dwkyvOluBw482mQ4xrzYyIY1t+//OrNi1ObGXuUw2jBQOFfJVj2Y6BOyYmfB1"
        "y36eBxi3zxeG5d5NYjm2GSh6e08QMAwu3zrINcqIzLOuNIiGXBtl7DjKt7b5wqi4oFiRpZsCyx2s"
        "mhSrdrtK/CkdU6nDN+34vSR/M8rZpWQdBE7a8g==",
        "WYT9JY3JIo/pEBp+tIM6Gt2nyTM=",
    ),
]


@pytest.mark.parametrize(("data_b64", "expected"), QXH_VECTORS)
def test_quickxor_vectors(data_b64: str, expected: str) -> None:
    data = base64.b64decode(data_b64)
    assert quickxor_b64(data) == expected
    for step in (1, 3, 7, 64, 161):
        h = QuickXorHash()
        for i in range(0, len(data), step):
            h.update(data[i : i + step])
        assert h.b64digest() == expected


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    with FakeGraph(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as g:
        yield g


@pytest.fixture
def env(graph: FakeGraph) -> Iterator[tuple[FakeGraph, Any, httpx.Client]]:
    site = graph.add_site(hostname="kmrl.sharepoint.com", path="/sites/Engineering")
    drive = site.add_drive(name="Documents", web_url_name="Shared Documents")
    with httpx.Client(headers={"Authorization": f"Bearer {graph.issue_token()}"}, timeout=10) as client:
        yield graph, drive, client


def enumerate_delta(client: httpx.Client, url: str, max_pages: int = 1000) -> tuple[list[dict], str, int]:
    """Follow nextLinks verbatim; return (items, deltaLink, pages)."""
    items: list[dict] = []
    for pages in range(1, max_pages + 1):
        resp = client.get(url)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        items.extend(body["value"])
        if "@odata.deltaLink" in body:
            assert "@odata.nextLink" not in body
            return items, body["@odata.deltaLink"], pages
        url = body["@odata.nextLink"]
    raise AssertionError("no deltaLink")


def token_from(graph: FakeGraph, secret: str = SECRET) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": secret,
        "scope": "https://graph.microsoft.com/.default",
    }
    return httpx.post(graph.token_url, data=form)


# -- auth ---------------------------------------------------------------------------------------


def test_token_endpoint_and_bearer_checks(graph: FakeGraph) -> None:
    graph.token_lifetime = 1
    resp = token_from(graph)
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 1

    bad = token_from(graph, secret="wrong")
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"
    assert 7000215 in bad.json()["error_codes"]

    oidc = httpx.get(f"{graph.authority_url}/{TENANT}/v2.0/.well-known/openid-configuration").json()
    host = graph.authority_url.split("://", 1)[1]  # endpoints named https on the host asked, as Entra does
    assert oidc["token_endpoint"] == f"https://{host}/{TENANT}/oauth2/v2.0/token"

    site = graph.add_site()
    url = f"{graph.graph_url}/sites/{site.id}"
    assert httpx.get(url, headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        resp = httpx.get(url, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    short = graph.issue_token(lifetime=0.05)
    time.sleep(0.1)
    resp = httpx.get(url, headers={"Authorization": f"Bearer {short}"})
    assert resp.status_code == 401 and "expired" in resp.json()["error"]["message"]


def test_msal_against_fake_authority(graph: FakeGraph) -> None:
    """Real MSAL, through the connector's own http_client, gets a token the fake accepts."""
    from kmrl_sync.connectors.sharepoint.auth import msal_authority, msal_http_client
    from kmrl_sync.connectors.sharepoint.options import SharePointOptions

    msal = pytest.importorskip("msal")
    options = SharePointOptions.model_validate({
        "tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
        "site_url": "https://kmrl.sharepoint.com/sites/Engineering",
        "graph_url": graph.graph_url, "authority_url": graph.authority_url})
    with msal_http_client(options) as http_client:
        app = msal.ConfidentialClientApplication(CLIENT, authority=msal_authority(options), client_credential=SECRET,
                                                 http_client=http_client, instance_discovery=False)
        result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    assert graph.issuer.check_bearer(f"Bearer {result['access_token']}") is None


# -- discovery ------------------------------------------------------------------------------


def test_site_and_drive_discovery(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    site = drive.site
    site.add_drive("Policies")
    site.add_drive("Archive")
    hidden = site.add_drive("Preservation Hold Library", system=True)
    for suffix in ("", ":"):
        body = client.get(f"{graph.graph_url}/sites/kmrl.sharepoint.com:/sites/Engineering{suffix}").json()
        assert body["id"] == site.id and body["id"].count(",") == 2
    encoded = site.id.replace(",", "%2C")
    assert client.get(f"{graph.graph_url}/sites/{encoded}").json()["webUrl"].endswith("/sites/Engineering")
    assert client.get(f"{graph.graph_url}/sites/kmrl.sharepoint.com:/sites/Nope").status_code == 404

    graph.drives_page_size = 2
    url, names = f"{graph.graph_url}/sites/{site.id}/drives", []
    pages = 0
    while url:
        body = client.get(url).json()
        names += [d["name"] for d in body["value"]]
        url = body.get("@odata.nextLink")
        pages += 1
    assert names == ["Documents", "Policies", "Archive"] and pages == 2
    assert hidden.id.startswith("b!")
    default = client.get(f"{graph.graph_url}/sites/{site.id}/drive").json()
    assert default["id"] == drive.id and default["webUrl"].endswith("/Shared%20Documents")


# -- delta ----------------------------------------------------------------------------------


def test_full_enumeration_paging_and_shapes(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    budget = drive.put_file("/Plans/Budget.xlsx", b"hello world")
    drive.put_file("/Plans/Deep/Notes.txt", b"abc")
    empty = drive.put_file("/empty.txt", b"")
    drive.add_package("/Plans/Notebook")

    items, delta_link, pages = enumerate_delta(client, graph.delta_url(drive, FULL_SELECT, top=2))
    assert pages == 4  # 7 items, 2 per page
    by_id = {i["id"]: i for i in items}
    assert items[0]["id"] == drive.root.id and "root" in items[0]
    seen: set[str] = set()
    for item in items:  # parents before children
        parent = item["parentReference"].get("id")
        assert parent is None or parent in seen
        seen.add(item["id"])
    b = by_id[budget.id]
    assert b["file"]["hashes"]["quickXorHash"] == "aCgDG9jwBhDc4Q1yawMZAAAAAAA="
    assert b["size"] == 11 and b["parentReference"]["path"] == f"/drives/{drive.id}/root:/Plans"
    assert b["webUrl"].endswith("/Shared%20Documents/Plans/Budget.xlsx")
    assert urlsplit(b["@microsoft.graph.downloadUrl"]).netloc != urlsplit(graph.graph_url).netloc
    assert by_id[empty.id]["file"]["hashes"] == {}
    notebook = next(i for i in items if i.get("name") == "Notebook")
    assert "package" in notebook and "file" not in notebook and "folder" not in notebook

    first = client.get(graph.delta_url(drive, FULL_SELECT, top=2)).json()
    next_link = first["@odata.nextLink"]
    assert next_link.startswith(graph.graph_url + "/drives/") and "$select" not in next_link
    assert delta_link.startswith(graph.graph_url) and "token=" in delta_link

    plain = client.get(graph.delta_url(drive, "id,name,file")).json()["value"]
    assert all("@microsoft.graph.downloadUrl" not in i for i in plain)

    unchanged = client.get(delta_link).json()
    assert unchanged["value"] == [] and "@odata.deltaLink" in unchanged
    latest = client.get(f"{graph.delta_url(drive)}?token=latest").json()
    assert latest["value"] == [] and "@odata.deltaLink" in latest
    sub = client.get(f"{graph.graph_url}/drives/{drive.id}/items/{budget.parent.id}/delta")
    assert sub.status_code == 400


def test_resume_tombstones_renames_and_recreate(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    a = drive.put_file("/A/a.txt", b"one")
    drive.put_file("/A/Sub/b.txt", b"two")
    gone = drive.put_file("/gone.txt", b"bye")
    d = drive.create_folder("/D")
    drive.put_file("/D/x.txt", b"x")
    e = drive.create_folder("/E")
    e_child = drive.put_file("/E/y.txt", b"y")
    r = drive.create_folder("/R")
    _, link, _ = enumerate_delta(client, graph.delta_url(drive, FULL_SELECT))

    old_etag = a.etag
    drive.put_file("/A/a.txt", b"one v2")
    drive.put_file("/A/a.txt", b"one v3")  # only the latest state is sent
    drive.rename("/A", "A2")
    drive.delete("/gone.txt")
    drive.delete("/D")  # no child tombstones
    drive.delete("/E", child_tombstones=True)
    new_r = drive.recreate_folder("/R")
    new = drive.put_file("/A2/new.txt", b"new")
    moved = drive.move("/A2/Sub", "/")

    items, link2, _ = enumerate_delta(client, link)
    ids = [i["id"] for i in items]
    assert len(ids) == len(set(ids))
    by_id = {i["id"]: i for i in items}
    assert by_id[a.id]["size"] == 6 and by_id[a.id]["eTag"] != old_etag
    assert by_id[a.id]["file"]["hashes"]["quickXorHash"] == quickxor_b64(b"one v3")
    assert by_id[a.parent.id]["name"] == "A2"  # the folder only: children not re-sent
    tomb = by_id[gone.id]
    assert tomb["deleted"] == {"state": "deleted"} and tomb["size"] == 0 and "file" in tomb
    assert "name" not in tomb and "cTag" not in tomb
    assert by_id[d.id]["deleted"] and "folder" in by_id[d.id]
    assert not any(i.get("name") == "x.txt" for i in items)
    assert by_id[e.id]["deleted"] and by_id[e_child.id]["deleted"]
    assert by_id[r.id]["deleted"] and by_id[new_r.id]["name"] == "R" and new_r.id != r.id
    assert by_id[new.id]["parentReference"]["id"] == a.parent.id
    assert ids.index(new.id) > ids.index(a.parent.id)
    assert by_id[moved.id]["parentReference"]["id"] == drive.root.id
    assert drive.item_by_path("/Sub/b.txt").id not in by_id  # descendants of a moved folder: not re-sent

    # Without `deleted` in $select the facet is stripped (tombstones look live).
    drive.delete("/A2/a.txt")
    first = client.get(graph.delta_url(drive, "id,name,size,file")).json()
    assert "@odata.nextLink" not in first
    stripped_link = first["@odata.deltaLink"]
    drive.put_file("/later.txt", b"z")
    drive.delete("/later.txt")
    later = client.get(stripped_link).json()["value"]
    assert later and all("deleted" not in i for i in later)
    resumed, _, _ = enumerate_delta(client, link2)
    assert {"state": "deleted"} in [i.get("deleted") for i in resumed]


def test_time_token_and_resend_unchanged(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    now = [time.time() - 3600]
    graph.store.clock = lambda: now[0]  # the store's clock is injectable: no sleeping
    drive.put_file("/old.txt", b"old")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now[0] + 5))
    now[0] += 10
    fresh = drive.put_file("/fresh.txt", b"fresh")
    assert fresh.modified == now[0]
    items, link, _ = enumerate_delta(client, f"{graph.delta_url(drive)}?token={stamp}")
    assert [i["id"] for i in items] == [fresh.id]
    drive.resend_unchanged("/fresh.txt")
    again, _, _ = enumerate_delta(client, link)
    assert [i["id"] for i in again] == [fresh.id] and again[0]["eTag"] == items[0]["eTag"]


def test_page_faults(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    for n in range(6):
        drive.put_file(f"/F/file{n}.txt", b"x" * n)
    graph.set_page_sizes([3, 0, 1, 0])
    graph.duplicate_in_page()
    graph.duplicate_across_pages()
    graph.child_before_parent()
    pages, url = [], graph.delta_url(drive, FULL_SELECT)
    while True:
        body = client.get(url).json()
        pages.append(body["value"])
        if "@odata.deltaLink" in body:
            break
        url = body["@odata.nextLink"]
    sizes = [len(p) for p in pages]
    assert sizes[0] == 4 and sizes[1] == 0  # 3 + in-page duplicate; then an empty page with nextLink
    assert pages[0][0]["id"] == pages[0][-1]["id"]
    assert pages[2][0]["id"] == pages[0][-2]["id"]  # repeated across pages
    flat = [i for p in pages for i in p]
    folder = drive.item_by_path("/F")
    assert len({i["id"] for i in flat}) == 8
    first_child = next(n for n, i in enumerate(flat) if i["parentReference"].get("id") == folder.id)
    assert first_child < next(n for n, i in enumerate(flat) if i["id"] == folder.id)


# -- 410 ------------------------------------------------------------------------------------------


def test_resync_required_on_expired_links(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    for n in range(5):
        drive.put_file(f"/doc{n}.txt", b"d")
    _, link, _ = enumerate_delta(client, graph.delta_url(drive, FULL_SELECT, top=2))
    graph.expire_delta_links()
    resp = client.get(link)
    assert resp.status_code == 410
    err = resp.json()["error"]
    assert err["code"] == "resyncRequired" and err["innerError"]["code"] == "resyncChangesApplyDifferences"
    items, _, pages = enumerate_delta(client, resp.headers["Location"])
    assert len(items) == 6 and pages == 3  # full enumeration, select/top preserved

    graph.resync_next_link(2, inner_code="resyncChangesUploadDifferences")
    first = client.get(graph.delta_url(drive, top=2)).json()
    second = client.get(first["@odata.nextLink"])
    assert second.status_code == 200
    gone = client.get(second.json()["@odata.nextLink"])
    assert gone.status_code == 410
    assert gone.json()["error"]["innerError"]["code"] == "resyncChangesUploadDifferences"
    assert "/root/delta?token=" in gone.headers["Location"]

    first = client.get(graph.delta_url(drive, top=2)).json()
    assert graph.expire_next_links() >= 1
    assert client.get(first["@odata.nextLink"]).status_code == 410


# -- throttling and transient faults ------------------------------------------------------


def test_throttle_and_counting(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    url = f"{graph.graph_url}/drives/{drive.id}"
    graph.throttle(status=429, retry_after=1, count=1)
    resp = client.get(url)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    assert resp.json()["error"]["innerError"]["code"] == "throttledRequest"
    assert client.get(url).status_code == 429  # impatient retry: rejected and counted
    assert graph.requests_during_throttle == 1
    time.sleep(1.05)
    assert client.get(url).status_code == 200
    assert graph.requests_during_throttle == 1

    graph.throttle(status=503, retry_after=None, count=1)
    resp = client.get(url)
    assert resp.status_code == 503 and "Retry-After" not in resp.headers
    assert client.get(url).status_code == 200

    graph.throttle(status=429, retry_after="http-date", count=1, date_seconds=0)
    resp = client.get(url)
    until = parsedate_to_datetime(resp.headers["Retry-After"]).timestamp()
    time.sleep(max(0.0, until - time.time()) + 0.02)
    assert client.get(url).status_code == 200
    assert graph.requests_during_throttle == 1

    graph.fail_nth_request(2, status=502)
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 502
    graph.empty_body_once()
    resp = client.get(url)
    assert resp.status_code == 200 and resp.content == b""
    assert client.get(url).json()["id"] == drive.id
    assert all(r.headers.get("authorization") in (None, "<redacted>") for r in graph.requests)


# -- content ----------------------------------------------------------------------------------


def test_content_redirect_and_download_origin(env: tuple[FakeGraph, Any, httpx.Client]) -> None:
    graph, drive, client = env
    data = bytes(range(256)) * 40
    item = drive.put_file("/Reports/q1.pdf", data)
    url = f"{graph.graph_url}/drives/{drive.id}/items/{item.id}/content"
    redirect = client.get(url)
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert urlsplit(location).netloc != urlsplit(graph.graph_url).netloc and "tempauth=" in location
    assert client.get(location).status_code == 401  # bearer must not go to the download host
    assert httpx.get(location).content == data
    followed = client.get(url, follow_redirects=True)  # httpx strips auth cross-origin
    assert followed.status_code == 200 and followed.content == data
    assert graph.requests_to("download")[-1].has_authorization is False

    part = httpx.get(location, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert client.get(url, headers={"If-None-Match": item.etag}).status_code == 304
    assert client.get(url, headers={"If-None-Match": item.ctag}).status_code == 304

    drive.set_enrichment("/Reports/q1.pdf")
    enriched = httpx.get(location).content  # bytes differ from the reported size/hash
    assert len(enriched) != item.size and quickxor_b64(enriched) != item.quickxor

    graph.truncate_download_once()
    with pytest.raises(httpx.HTTPError):
        httpx.get(location)
    drive.set_enrichment("/Reports/q1.pdf", None)
    assert httpx.get(location).content == data

    graph.expire_download_urls()
    assert httpx.get(location).status_code == 401
    graph.download_url_lifetime = 0.05
    short = client.get(url).headers["Location"]
    time.sleep(0.1)
    assert httpx.get(short).status_code in (401, 403)


def test_bulk_populate_is_deterministic(graph: FakeGraph) -> None:
    drive = graph.add_site().add_drive()
    drive.bulk_populate(n_files=3000, n_folders=60, size=10240, seed=7)
    with httpx.Client(headers={"Authorization": f"Bearer {graph.issue_token()}"}, timeout=30) as client:
        items, _, pages = enumerate_delta(client, graph.delta_url(drive, FULL_SELECT, top=1000))
        assert len(items) == 1 + 60 + 3000 and pages == 4
        sample = next(i for i in items if i.get("name") == "file-000123.bin")
        body = httpx.get(sample["@microsoft.graph.downloadUrl"]).content
    assert len(body) == 10240 and quickxor_b64(body) == sample["file"]["hashes"]["quickXorHash"]
    other = FakeGraph(seed=0).add_site().add_drive()
    other.bulk_populate(n_files=200, n_folders=4, size=10240, seed=7)
    assert (
        other.item_by_path("/folder-00003/file-000123.bin").quickxor
        == sample["file"]["hashes"]["quickXorHash"]
    )
