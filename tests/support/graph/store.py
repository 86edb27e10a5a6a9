"""Data model of the fake tenant: sites, drives, driveItems and the per-drive change log.

Graph's delta feed is "latest state of every item changed since the cursor", not a
list of events. So the change log is just a monotonic per-drive sequence number
stamped on each item when it changes (``Item.seq``); deleted items stay in the
table as tombstones with the sequence number of their deletion. A delta token is
then nothing more than a sequence number, and resuming means "items with
``seq`` greater than the token". ``seq_times`` maps wall time to sequence numbers
for ``token=<ISO time>``.

All mutation goes through ``Drive`` methods holding the store lock, so tests can
mutate while the HTTP threads serve pages.
"""

from __future__ import annotations

import base64
import bisect
import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .content import BytesContent, Content, GeneratedContent

DRIVE_TYPE = "documentLibrary"
_MIME_BY_EXT = {
    "txt": "text/plain",
    "pdf": "application/pdf",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "json": "application/json",
    "csv": "text/csv",
    "png": "image/png",
    "jpg": "image/jpeg",
}


def iso(ts: float) -> str:
    """Graph's timestamp format (UTC, second precision, ``Z`` suffix)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def guess_mime(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return _MIME_BY_EXT.get(ext, "application/octet-stream")


def split_path(path: str) -> list[str]:
    """Drive-relative path -> components; "" and "/" are the root."""
    return [p for p in path.strip().split("/") if p]


class Item:
    """One driveItem (root, folder, file or package), live or tombstoned."""

    __slots__ = (
        "children",
        "content",
        "created",
        "ctag_version",
        "deleted",
        "drive",
        "emit_tombstone",
        "enrichment",
        "folder_size",
        "guid",
        "id",
        "kind",
        "mime_type",
        "modified",
        "name",
        "parent",
        "seq",
        "version",
    )

    def __init__(self, drive: Drive, item_id: str, name: str, kind: str, parent: Item | None) -> None:
        now = drive.store.clock()
        self.drive = drive
        self.id = item_id
        self.name = name
        self.kind = kind  # "root" | "folder" | "file" | "package"
        self.parent = parent
        self.children: dict[str, Item] = {}  # casefolded name -> child (SharePoint is case-insensitive)
        self.created = now
        self.modified = now
        self.guid = str(uuid.UUID(int=drive.store.rng.getrandbits(128))).upper()
        self.version = 1
        self.ctag_version = 1
        self.content: Content | None = None
        self.mime_type: str | None = None
        self.folder_size = 0  # aggregate of descendant file sizes, for folders
        self.deleted = False
        self.emit_tombstone = True
        self.seq = 0
        self.enrichment: bytes | None = None

    # -- derived properties -------------------------------------------------
    @property
    def is_folder(self) -> bool:
        return self.kind in ("folder", "root")

    @property
    def size(self) -> int:
        if self.kind == "file":
            return self.content.size if self.content else 0
        return self.folder_size

    @property
    def etag(self) -> str:
        return f'"{{{self.guid}}},{self.version}"'

    @property
    def ctag(self) -> str:
        return f'"c:{{{self.guid}}},{self.ctag_version}"'

    @property
    def quickxor(self) -> str | None:
        """None for 0-byte files: SharePoint sends ``"hashes": {}`` for them."""
        if self.kind != "file" or self.content is None or self.content.size == 0:
            return None
        return self.content.quickxor

    @property
    def path(self) -> str:
        """Drive-relative path like ``/Plans/Budget.xlsx`` ("" for the root)."""
        parts: list[str] = []
        node: Item | None = self
        while node is not None and node.kind != "root":
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts)) if parts else ""

    def served_body(self) -> Content | None:
        """What a download returns: the enriched bytes if the enrichment hook is set."""
        if self.enrichment is not None:
            return BytesContent(self.enrichment)
        return self.content

    def __repr__(self) -> str:
        state = "deleted" if self.deleted else self.kind
        return f"<Item {self.id} {self.path or '/'} {state} seq={self.seq}>"


class Site:
    """A SharePoint site (``/sites/{hostname}:/{path}``) holding document libraries."""

    def __init__(self, store: Store, hostname: str, path: str, display_name: str | None) -> None:
        self.store = store
        self.hostname = hostname
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.id = f"{hostname},{store.new_guid()},{store.new_guid()}"
        self.name = self.path.rsplit("/", 1)[-1] if self.path else hostname
        self.display_name = display_name or self.name
        self.web_url = f"https://{hostname}{quote(self.path)}"
        self.created = store.clock()
        self.drives: list[Drive] = []

    def add_drive(
        self, name: str = "Documents", web_url_name: str | None = None, *, system: bool = False
    ) -> Drive:
        """Create a document library. ``web_url_name`` is the URL segment ("Shared Documents")."""
        with self.store.lock:
            drive = Drive(self.store, self, name, web_url_name or name, system=system)
            self.drives.append(drive)
            self.store.drives[drive.id] = drive
            return drive

    @property
    def default_drive(self) -> Drive | None:
        return self.drives[0] if self.drives else None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "displayName": self.display_name,
            "webUrl": self.web_url,
            "createdDateTime": iso(self.created),
            "lastModifiedDateTime": iso(self.created),
            "siteCollection": {"hostname": self.hostname},
        }


class Drive:
    """A document library with its item tree and change log (see module docstring)."""

    def __init__(
        self, store: Store, site: Site, name: str, web_url_name: str, *, system: bool = False
    ) -> None:
        self.store = store
        self.site = site
        self.name = name
        self.web_url_name = web_url_name
        self.system = system
        self.id = "b!" + base64.urlsafe_b64encode(store.rng.randbytes(48)).decode("ascii")
        self.web_url = f"{site.web_url}/{quote(web_url_name)}"
        self.created = store.clock()
        self.items: dict[str, Item] = {}
        self.seq = 0
        self.seq_times: list[tuple[float, int]] = []  # (time, seq) for token=<ISO time>
        self.delta_epoch = 0  # bumped by FakeGraph.expire_delta_links()
        self.root = Item(self, self.store.new_item_id(), "root", "root", None)
        self.items[self.root.id] = self.root
        self._touch(self.root)

    # -- change log -----------------------------------------------------------
    def _touch(self, item: Item, *, modified: bool = True) -> None:
        """Record a change of ``item``: new sequence number, so deltas re-send it."""
        self.seq += 1
        item.seq = self.seq
        now = self.store.clock()
        if modified:
            item.modified = now
        self.seq_times.append((now, self.seq))

    def seq_at(self, when: float) -> int:
        """Highest sequence number recorded at or before ``when`` (0 if none)."""
        i = bisect.bisect_right(self.seq_times, (when, float("inf")))
        return self.seq_times[i - 1][1] if i else 0

    # -- lookups ----------------------------------------------------------------
    def item_by_path(self, path: str) -> Item:
        """Live item at ``path`` ("/" = root); KeyError if missing."""
        with self.store.lock:
            node = self.root
            for part in split_path(path):
                child = node.children.get(part.casefold())
                if child is None:
                    raise KeyError(f"no item at {path!r} in drive {self.name}")
                node = child
            return node

    def get_item(self, item_id: str) -> Item:
        """Item (live or tombstone) by id; KeyError if never existed."""
        return self.items[item_id]

    def live_items(self) -> Iterator[Item]:
        """Live items, root first, parents before children (pre-order walk)."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            if node.children:
                stack.extend(reversed(list(node.children.values())))

    # -- internal helpers ---------------------------------------------------
    def _parent_for(self, path: str, create: bool) -> tuple[Item, str]:
        parts = split_path(path)
        if not parts:
            raise ValueError("the root has no parent")
        node = self.root
        for part in parts[:-1]:
            child = node.children.get(part.casefold())
            if child is None:
                if not create:
                    raise KeyError(f"missing parent folder {part!r} of {path!r}")
                child = self._new_child(node, part, "folder")
            elif not child.is_folder:
                raise NotADirectoryError(f"{part!r} in {path!r} is not a folder")
            node = child
        return node, parts[-1]

    def _new_child(self, parent: Item, name: str, kind: str) -> Item:
        if name.casefold() in parent.children:
            raise FileExistsError(f"{name!r} already exists in {parent.path or '/'}")
        item = Item(self, self.store.new_item_id(), name, kind, parent)
        parent.children[name.casefold()] = item
        self.items[item.id] = item
        self._touch(item)
        return item

    def _adjust_sizes(self, folder: Item | None, delta: int) -> None:
        while folder is not None and delta:
            folder.folder_size += delta
            folder = folder.parent

    def _set_content(self, item: Item, content: Content, mime_type: str | None) -> None:
        old = item.size
        item.content = content
        item.mime_type = mime_type or item.mime_type or guess_mime(item.name)
        self._adjust_sizes(item.parent, item.size - old)

    # -- mutation API (used by tests) ------------------------------------------
    def create_folder(self, path: str, *, exist_ok: bool = True) -> Item:
        """Create a folder (and missing parents, like ``mkdir -p``)."""
        with self.store.lock:
            parent, name = self._parent_for(path, create=True)
            existing = parent.children.get(name.casefold())
            if existing is not None:
                if exist_ok and existing.is_folder:
                    return existing
                raise FileExistsError(path)
            return self._new_child(parent, name, "folder")

    def put_file(self, path: str, content: bytes | Content, mime_type: str | None = None) -> Item:
        """Create or overwrite a file (missing parent folders are created).

        An overwrite bumps eTag and cTag, recomputes the hash and lastModifiedDateTime,
        and keeps the item id, as SharePoint does for a new version.
        """
        body = content if isinstance(content, Content) else BytesContent(content)
        with self.store.lock:
            parent, name = self._parent_for(path, create=True)
            item = parent.children.get(name.casefold())
            if item is None:
                item = self._new_child(parent, name, "file")
            elif item.kind != "file":
                raise IsADirectoryError(path)
            else:
                item.version += 1
                item.ctag_version += 1
                self._touch(item)
            self._set_content(item, body, mime_type)
            return item

    def add_package(self, path: str, package_type: str = "oneNote") -> Item:
        """A OneNote-like item: ``package`` facet, neither ``file`` nor ``folder``."""
        with self.store.lock:
            parent, name = self._parent_for(path, create=True)
            item = self._new_child(parent, name, "package")
            item.mime_type = package_type  # reused to carry package.type
            return item

    def rename(self, path: str, new_name: str) -> Item:
        """Rename in place. Delta re-sends only this item, never its descendants."""
        with self.store.lock:
            item = self.item_by_path(path)
            return self._relocate(item, item.parent, new_name)

    def move(self, path: str, new_parent_path: str, new_name: str | None = None) -> Item:
        """Move (optionally renaming). Delta re-sends only this item."""
        with self.store.lock:
            item = self.item_by_path(path)
            target = self.item_by_path(new_parent_path)
            if not target.is_folder:
                raise NotADirectoryError(new_parent_path)
            node: Item | None = target
            while node is not None:
                if node is item:
                    raise ValueError("cannot move a folder into itself")
                node = node.parent
            return self._relocate(item, target, new_name or item.name)

    def _relocate(self, item: Item, new_parent: Item | None, new_name: str) -> Item:
        if item.kind == "root" or item.parent is None or new_parent is None:
            raise ValueError("cannot rename or move the root")
        key = new_name.casefold()
        clash = new_parent.children.get(key)
        if clash is not None and clash is not item:
            raise FileExistsError(new_name)
        del item.parent.children[item.name.casefold()]
        self._adjust_sizes(item.parent, -item.size)
        item.parent = new_parent
        item.name = new_name
        new_parent.children[key] = item
        self._adjust_sizes(new_parent, item.size)
        item.version += 1  # eTag changes on metadata edits, cTag does not
        self._touch(item)
        return item

    def delete(self, path: str, child_tombstones: bool = False) -> Item:
        """Delete an item (a folder with its whole subtree).

        The item gets a tombstone. Descendants are deleted too; whether they get their
        own tombstones is the ``child_tombstones`` switch (SharePoint does either).
        """
        with self.store.lock:
            item = self.item_by_path(path)
            if item.kind == "root":
                raise ValueError("cannot delete the root")
            self._delete(item, child_tombstones)
            return item

    def _delete(self, item: Item, child_tombstones: bool) -> None:
        assert item.parent is not None
        del item.parent.children[item.name.casefold()]
        self._adjust_sizes(item.parent, -item.size)
        # Post-order so children's tombstones precede the folder's, as SharePoint does.
        stack = [(item, False)]
        order: list[Item] = []
        while stack:
            node, expanded = stack.pop()
            if expanded or not node.children:
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in node.children.values())
        for node in order:
            node.deleted = True
            if node is item or child_tombstones:
                node.emit_tombstone = True
                self._touch(node)
            else:
                # Silently gone: never reported again (the client must drop the subtree).
                node.emit_tombstone = False
            node.children = {}

    def recreate_folder(self, path: str, *, tombstone: bool = True) -> Item:
        """Delete a folder and create an empty one with the same name: new id.

        ``tombstone=False`` reproduces the missed-change case where the old id is
        never reported deleted (microsoft-graph-docs-contrib #8794).
        """
        with self.store.lock:
            old = self.item_by_path(path)
            if old.kind != "folder":
                raise NotADirectoryError(path)
            parent = old.parent
            assert parent is not None
            self._delete(old, child_tombstones=False)
            if not tombstone:
                old.emit_tombstone = False
            return self._new_child(parent, old.name, "folder")

    def resend_unchanged(self, path: str) -> Item:
        """Make the next delta re-send this item although nothing changed (#15378)."""
        with self.store.lock:
            item = self.item_by_path(path)
            self._touch(item, modified=False)
            return item

    def set_enrichment(self, path: str, data: bytes | None = b"") -> Item:
        """Serve bytes that differ from the reported size/hash ("enrichment").

        ``data=b""`` (default) appends a marker to the real body; any other bytes are
        served verbatim; ``None`` switches the hook off. Metadata is not changed.
        """
        with self.store.lock:
            item = self.item_by_path(path)
            if data is None:
                item.enrichment = None
            else:
                original = item.content.read() if item.content else b""
                item.enrichment = data or original + b"\n<!-- enriched by SharePoint -->\n"
            return item

    def bulk_populate(
        self, n_files: int, n_folders: int = 0, size: int = 10240, *, seed: int = 0, under: str = ""
    ) -> list[Item]:
        """Fast deterministic tree for benchmarks; bodies are generated on demand.

        Folders form a shallow tree (16 top-level, then 8 per folder); file ``j`` goes
        to folder ``j % n_folders``. Returns the created folders.
        """
        with self.store.lock:
            base = self.create_folder(under) if split_path(under) else self.root
            folders: list[Item] = []
            top = min(n_folders, 16)
            for i in range(n_folders):
                parent = base if i < top else folders[(i - top) // 8]
                folders.append(self._new_child(parent, f"folder-{i:05d}", "folder"))
            for j in range(n_files):
                parent = folders[j % n_folders] if folders else base
                item = self._new_child(parent, f"file-{j:06d}.bin", "file")
                self._set_content(item, GeneratedContent(seed, j, size), "application/octet-stream")
            return folders

    # -- serialisation --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "driveType": DRIVE_TYPE,
            "description": "",
            "webUrl": self.web_url,
            "createdDateTime": iso(self.created),
            "lastModifiedDateTime": iso(self.created),
            "quota": {"used": self.root.folder_size, "total": 1 << 40},
        }
        if self.system:
            data["system"] = {}
        return data

    def item_json(self, item: Item, download_url: str | None = None) -> dict[str, Any]:
        """Full representation of a live item or of a tombstone (SharePoint shape)."""
        ref: dict[str, Any] = {"driveId": self.id, "driveType": DRIVE_TYPE}
        if item.deleted:
            if item.parent is not None:
                ref["id"] = item.parent.id
            data: dict[str, Any] = {
                "id": item.id,
                "deleted": {"state": "deleted"},
                "size": 0,
                "parentReference": ref,
            }
            if item.kind == "file":
                data["file"] = {}
            elif item.kind == "package":
                data["package"] = {}
            else:
                data["folder"] = {}
            return data
        data = {
            "id": item.id,
            "name": item.name,
            "eTag": item.etag,
            "cTag": item.ctag,
            "size": item.size,
            "createdDateTime": iso(item.created),
            "lastModifiedDateTime": iso(item.modified),
            "webUrl": self.web_url + quote(item.path),
            "parentReference": ref,
        }
        if item.parent is not None:
            ref["id"] = item.parent.id
            ref["path"] = f"/drives/{self.id}/root:{item.parent.path}"
        if item.kind == "root":
            data["root"] = {}
        if item.is_folder:
            data["folder"] = {"childCount": len(item.children)}
        elif item.kind == "package":
            data["package"] = {"type": item.mime_type or "oneNote"}
        else:
            qxh = item.quickxor
            data["file"] = {"mimeType": item.mime_type, "hashes": {"quickXorHash": qxh} if qxh else {}}
            if download_url:
                data["@microsoft.graph.downloadUrl"] = download_url
        return data


class Store:
    """Everything server-side: the lock, the id generator and the sites/drives."""

    def __init__(self, seed: int = 0) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.clock = time.time
        self.sites: list[Site] = []
        self.drives: dict[str, Drive] = {}

    def new_guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128)))

    def new_item_id(self) -> str:
        """SharePoint-looking item id: "01" + 32 base32 characters."""
        return "01" + base64.b32encode(self.rng.randbytes(20)).decode("ascii")[:32]

    def add_site(self, hostname: str, path: str, display_name: str | None = None) -> Site:
        with self.lock:
            site = Site(self, hostname, path, display_name)
            self.sites.append(site)
            return site

    def site_by_path(self, hostname: str, path: str) -> Site | None:
        wanted = "/" + path.strip("/") if path.strip("/") else ""
        for site in self.sites:
            if site.hostname.casefold() == hostname.casefold() and site.path.casefold() == wanted.casefold():
                return site
        return None

    def site_by_id(self, site_id: str) -> Site | None:
        for site in self.sites:
            if site.id.casefold() == site_id.casefold():
                return site
        return None
