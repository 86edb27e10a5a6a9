"""Item records (aux hash `items`) and path derivation from the parent chain.

Graph's delta feed is keyed by item id and does NOT re-send descendants when a folder is renamed
or moved, and `parentReference.path` goes stale, so the truth we keep is per id: parent id and
name (plus what we need to rebuild a document's metadata without re-downloading). Paths are
derived by walking parents. Only folders are cached in memory (a library has far fewer folders
than files); file records stay in Redis and are read one page at a time.
"""

from __future__ import annotations

import json
from typing import Any

from kmrl_sync.state import ConnectorState

ITEMS = "items"  # aux hash: item id -> compact JSON record (files and folders)
ORPHANS = "orphans"  # aux hash: file id -> "1" when its parent chain was unknown when seen
STAGE = "stage"  # aux hash: item id -> item JSON of an incremental round not yet applied
RETRY = "retry"  # aux hash: file id -> generation/run marker, content to fetch again
FOLDER_CACHE_LIMIT = 500_000


def encode(record: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in record.items() if v not in (None, "")}, separators=(",", ":"),
                      ensure_ascii=False)


def decode(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class FolderTree:
    """id -> (parent id, name) for folders, loaded from Redis on demand, overlaid by fresh pages."""

    def __init__(self, state: ConnectorState, root_id: str):
        self.state = state
        self.root_id = root_id
        self.nodes: dict[str, tuple[str, str] | None] = {}  # None: known not to be a live folder
        self.paths: dict[str, str] = {root_id: ""}

    def set(self, item_id: str, parent: str, name: str) -> None:
        old = self.nodes.get(item_id)
        self.nodes[item_id] = (parent, name)
        if old != (parent, name):
            self.invalidate()

    def drop(self, item_id: str) -> None:
        self.nodes[item_id] = None
        self.invalidate()

    def invalidate(self) -> None:
        """A folder moved or vanished: every cached path may be stale."""
        if len(self.paths) > 1:
            self.paths = {self.root_id: ""}

    def prefetch(self, ids: list[str]) -> None:
        """Load the records of unknown folder ids in one round trip."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self.nodes and i != self.root_id]
        if not wanted:
            return
        if len(self.nodes) > FOLDER_CACHE_LIMIT:
            self.nodes = {k: v for k, v in self.nodes.items() if k in ids}
        for item_id, raw in zip(wanted, self.state.aux_get(ITEMS, wanted), strict=True):
            rec = decode(raw)
            self.nodes[item_id] = (rec["p"], rec["n"]) if rec and rec.get("f") and "p" in rec else None

    def chain(self, folder_id: str) -> list[str] | None:
        """Folder ids from `folder_id` up to (excluding) the root; None if the chain is broken."""
        out: list[str] = []
        node = folder_id
        seen: set[str] = set()
        while node != self.root_id:
            if node in seen:  # a cycle can only come from corrupt records: treat as unknown
                return None
            seen.add(node)
            if node not in self.nodes:
                self.prefetch([node])
            entry = self.nodes.get(node)
            if entry is None:
                return None
            out.append(node)
            node = entry[0]
        return out

    def path(self, folder_id: str) -> str | None:
        """Library-relative path of a folder ("" for the root, "A/B" below), None if unknown."""
        cached = self.paths.get(folder_id)
        if cached is not None:
            return cached
        chain = self.chain(folder_id)
        if chain is None:
            return None
        parts = [self.nodes[i][1] for i in reversed(chain)]  # type: ignore[index]
        path = "/".join(parts)
        self.paths[folder_id] = path
        return path
