"""`driveItem: delta` pages: the first URL, one page fetched, items deduplicated and classified.

Links are followed verbatim (`$select`/`$top` are baked into them). `deleted` is always
selected, otherwise Graph strips the facet and tombstones look like live files.

An item is data from a server: its id becomes part of Redis keys and commit arguments, so an entry
whose id is not a short printable string is not an item but a failure, reported with the page and
skipped (one such entry used to fail every run of the connector, its cursor never moving on). A
parent id of the same kind is no parent, a size that is not a count is unknown (the download's own
size cap still holds), and texts are bounded: a name to MAX_NAME_CHARS, other fields to
MAX_TEXT_CHARS, a longer version tag replaced by its digest (two long tags must still differ).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from kmrl_sync.display import clipped
from kmrl_sync.engine.connector import ConnectorError
from kmrl_sync.engine.documents import Failure

from .http import GraphHttp

SELECT = ("id,name,eTag,cTag,size,file,folder,package,root,deleted,parentReference,createdDateTime,"
          "lastModifiedDateTime,lastModifiedBy,webUrl,content.downloadUrl")
DOWNLOAD_URL = "@microsoft.graph.downloadUrl"
#: Graph's item ids are about 34 characters (drive ids about 66): far more is not an id
MAX_ID_CHARS = 256
#: SharePoint allows 400 characters for a whole path; a tag, a URL, a date are far shorter
MAX_NAME_CHARS = 1024
MAX_TEXT_CHARS = 4096
MAX_TAG_CHARS = 256


def usable_id(value: Any) -> bool:
    """A non-empty string of at most MAX_ID_CHARS printable characters, no spaces."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS
            and all(char > " " and char != "\x7f" for char in value))


def _rejected(entry: Any) -> Failure:
    if not isinstance(entry, dict):
        return Failure(None, f"Graph sent a delta entry that is not an item: {clipped(repr(entry), 120)}; skipped")
    return Failure(None, f"Graph sent an item whose id is unusable ({clipped(repr(entry.get('id')), 120)}, "
                         f"name {clipped(repr(entry.get('name')), 120)}); skipped")


def initial_url(graph_url: str, drive_id: str, page_size: int) -> str:
    return f"{graph_url}/drives/{drive_id}/root/delta?$select={SELECT}&$top={page_size}"


@dataclass(slots=True)
class Page:
    items: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None
    rejected: list[Failure]  # entries that are not usable items, each reported


def fetch_page(http: GraphHttp, link: str) -> Page:
    """One page; ResyncRequired (410) propagates to the caller, which restarts fully."""
    body = http.get_json(link)
    value = body.get("value")
    if not isinstance(value, list):
        raise ConnectorError("Graph delta page has no 'value' list")
    next_link, delta_link = body.get("@odata.nextLink"), body.get("@odata.deltaLink")
    if not next_link and not delta_link:
        raise ConnectorError("Graph delta page carries neither @odata.nextLink nor @odata.deltaLink")
    for link_ in (next_link, delta_link):
        if link_ and not http.is_graph(link_):
            raise ConnectorError("Graph delta page links outside graph_url; refusing to send the token there")
    items: list[dict[str, Any]] = []
    rejected: list[Failure] = []
    for entry in value:
        if isinstance(entry, dict) and usable_id(entry.get("id")):
            items.append(entry)
        else:
            rejected.append(_rejected(entry))
    return Page(items, next_link, delta_link, rejected)


def last_wins(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per id, the last occurrence, in the order of last occurrences."""
    latest: dict[str, dict[str, Any]] = {}
    for item in items:
        latest.pop(item["id"], None)
        latest[item["id"]] = item
    return list(latest.values())


def kind_of(item: dict[str, Any]) -> str:
    """deleted | root | folder | file | package | other -- `deleted` is checked first."""
    if "deleted" in item or "@removed" in item:
        return "deleted"
    if "root" in item:
        return "root"
    if "folder" in item:
        return "folder"
    if "file" in item:
        return "file"
    if "package" in item:
        return "package"
    return "other"


def parent_of(item: dict[str, Any]) -> str | None:
    ref = item.get("parentReference")
    parent = ref.get("id") if isinstance(ref, dict) else None
    return parent if usable_id(parent) else None


def size_of(item: dict[str, Any]) -> int:
    """Graph's `size` in bytes; 0 (unknown) unless it is a count."""
    size = item.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


def text_of(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """A field of an item as text ('' when absent), at most `limit` characters."""
    return clipped(str(value or ""), limit)


def name_of(item: dict[str, Any]) -> str:
    return text_of(item.get("name"), MAX_NAME_CHARS)


def _tag(value: Any) -> str:
    """A version tag as stored: itself, or for an overlong one its digest (still a different tag)."""
    text = str(value or "")
    if len(text) <= MAX_TAG_CHARS:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def quickxor_of(item: dict[str, Any]) -> str:
    f = item.get("file")
    hashes = f.get("hashes") if isinstance(f, dict) else None
    return _tag(hashes.get("quickXorHash")) if isinstance(hashes, dict) else ""


def content_version(item: dict[str, Any]) -> str:
    """cTag (changes with content only), else the hash, else eTag (changes on renames too)."""
    if item.get("cTag"):
        return _tag(item["cTag"])
    qxh = quickxor_of(item)
    if qxh:
        return f"qxh:{qxh}:{size_of(item) if 'size' in item else ''}"
    return _tag(item.get("eTag"))


def modified_by(item: dict[str, Any]) -> str:
    by = item.get("lastModifiedBy")
    if not isinstance(by, dict):
        return ""
    for who in ("user", "application", "device"):
        entry = by.get(who)
        if isinstance(entry, dict):
            return text_of(entry.get("displayName") or entry.get("email") or entry.get("id"))
    return ""
