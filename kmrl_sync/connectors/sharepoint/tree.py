"""Item records (aux hash `items`) and path derivation from the parent chain.

Graph's delta feed is keyed by item id and does NOT re-send descendants when a folder is renamed
or moved, and `parentReference.path` goes stale, so the truth we keep is per id: parent id and
name (plus what we need to rebuild a document's metadata without re-downloading). Paths are
derived by walking parents. Only folders are cached in memory, a bounded window of them
(`FolderTree`); file records stay in Redis and are read one page at a time.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .reads import CommittedReads

ITEMS = "items"  # aux hash: item id -> compact JSON record (files and folders)
ORPHANS = "orphans"  # aux hash: file id -> "1" when its parent chain was unknown when seen
STAGE = "stage"  # aux hash: item id -> item JSON of an incremental round not yet applied
RETRY = "retry"  # aux hash: file id -> generation/run marker, content to fetch again


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
    """id -> (parent id, name) for folders: what the page being applied changed, over a bounded
    window of folders read from Redis.

    Why bounded: a library of a million files has tens of thousands of folders, at about 350 bytes
    each here; a cache of every folder seen grew with the library (issue 19). The window keeps
    the folders used last (the parents of the files of recent pages: delta lists a folder's
    children near it); a folder that left it is read again from Redis, one round trip per page
    for the page's parents. What a page changed is not in Redis until that page's last batch is
    committed (the folder records travel with it), so those entries are kept apart (`fresh`) and
    never evicted until `committed()` says the page has landed.
    """

    CACHE_LIMIT = 10_000  # folders in the window, and paths cached

    def __init__(self, state: CommittedReads, root_id: str):
        self.state = state
        self.root_id = root_id
        self.fresh: dict[str, tuple[str, str] | None] = {}  # set or dropped by the page not yet committed
        self.known: dict[str, tuple[str, str] | None] = {}  # None: known not to be a live folder
        self.paths: dict[str, str] = {root_id: ""}

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.fresh or item_id in self.known

    def get(self, item_id: str) -> tuple[str, str] | None:
        """(parent id, name) of a live folder, None if not one or not loaded (see `prefetch`)."""
        if item_id in self.fresh:
            return self.fresh[item_id]
        return self.known.get(item_id)

    def set(self, item_id: str, parent: str, name: str) -> None:
        old = self.get(item_id)
        self.fresh[item_id] = (parent, name)
        if old != (parent, name):
            self.invalidate()

    def drop(self, item_id: str) -> None:
        self.fresh[item_id] = None
        self.invalidate()

    def committed(self) -> None:
        """The batches carrying the fresh entries' records are committed: they may be evicted now."""
        if self.fresh:
            self.known.update(self.fresh)
            self.fresh = {}
            self._bound()

    def invalidate(self) -> None:
        """A folder moved or vanished: every cached path may be stale."""
        if len(self.paths) > 1:
            self.paths = {self.root_id: ""}

    def _bound(self) -> None:
        """Evict the oldest half of the window once it is full (dicts keep insertion order)."""
        if len(self.known) > self.CACHE_LIMIT:
            for k in list(itertools.islice(self.known, len(self.known) - self.CACHE_LIMIT // 2)):
                del self.known[k]

    def prefetch(self, ids: list[str]) -> None:
        """Load the records of unknown folder ids in one round trip."""
        wanted = [i for i in dict.fromkeys(ids) if i not in self and i != self.root_id]
        if not wanted:
            return
        for item_id, raw in zip(wanted, self.state.aux_get(ITEMS, wanted), strict=True):
            rec = decode(raw)
            self.known[item_id] = (rec["p"], rec["n"]) if rec and rec.get("f") and "p" in rec else None
        self._bound()

    def _walk(self, folder_id: str) -> list[tuple[str, str]] | None:
        """(folder id, name) from `folder_id` up to (excluding) the root; None if the chain is broken.

        Names are taken as the walk meets them: a prefetch further up may evict an entry below."""
        out: list[tuple[str, str]] = []
        node = folder_id
        seen: set[str] = set()
        while node != self.root_id:
            if node in seen:  # a cycle can only come from corrupt records: treat as unknown
                return None
            seen.add(node)
            if node not in self:
                self.prefetch([node])
            entry = self.get(node)
            if entry is None:
                return None
            out.append((node, entry[1]))
            node = entry[0]
        return out

    def chain(self, folder_id: str) -> list[str] | None:
        """Folder ids from `folder_id` up to (excluding) the root; None if the chain is broken."""
        walked = self._walk(folder_id)
        return None if walked is None else [node for node, _name in walked]

    def path(self, folder_id: str) -> str | None:
        """Library-relative path of a folder ("" for the root, "A/B" below), None if unknown."""
        cached = self.paths.get(folder_id)
        if cached is not None:
            return cached
        walked = self._walk(folder_id)
        if walked is None:
            return None
        path = "/".join(name for _node, name in reversed(walked))
        if len(self.paths) > self.CACHE_LIMIT:
            self.paths = {self.root_id: ""}
        self.paths[folder_id] = path
        return path
