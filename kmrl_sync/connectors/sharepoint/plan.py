"""From delta items (or stored records) to changes: scope, versions, downloads, metadata.

A document's version is `<content version>|<path digest>`: the content version (cTag, else
quickXorHash, else eTag) decides whether to download; the path digest makes a rename or move a
new version so the hub's document hash gets the new path. That new version is metadata-only: the
stored sha256/blob are reused, nothing is downloaded, and the document id (the Graph item id)
stays the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.engine.documents import BATCH_LIMIT, AuxWrite, Change, Delete, Failure, Upsert

from .delta import DOWNLOAD_URL, content_version, modified_by, name_of, parent_of, quickxor_of, size_of, text_of
from .download import Downloader, Fetched, Job
from .reads import CommittedReads
from .tree import ITEMS, ORPHANS, RETRY, FolderTree, encode


@dataclass(slots=True)
class Unit:
    """One document's outcome: at most one change, the aux writes that go with it, a failure."""

    change: Change | None = None
    aux: list[AuxWrite] = field(default_factory=list)
    failure: Failure | None = None
    unchanged: int = 0


@dataclass(slots=True)
class FileInfo:
    id: str
    parent: str
    name: str
    cv: str  # content version
    qxh: str
    size: int
    mime: str
    modified_at: str
    created_at: str
    by: str
    web_url: str
    download_url: str | None = None  # transient, from the delta item only
    sha: str = ""  # from the stored record: content we already have
    blob: str = ""
    stored_cv: str = ""
    stored_qxh: str = ""
    stored_size: int = -1
    raw: str | None = None  # the stored record as it was (skip rewriting an identical one)
    was_orphan: bool = False

    @classmethod
    def from_item(cls, item: dict[str, Any], stored: dict[str, Any] | None, raw: str | None) -> FileInfo:
        f = item.get("file") if isinstance(item.get("file"), dict) else {}
        info = cls(
            id=item["id"], parent=parent_of(item) or "", name=name_of(item),
            cv=content_version(item), qxh=quickxor_of(item), size=size_of(item),
            mime=text_of(f.get("mimeType") or "application/octet-stream"),
            modified_at=text_of(item.get("lastModifiedDateTime")),
            created_at=text_of(item.get("createdDateTime")), by=modified_by(item),
            web_url=text_of(item.get("webUrl")), download_url=item.get(DOWNLOAD_URL), raw=raw)
        info.absorb(stored)
        return info

    @classmethod
    def from_record(cls, item_id: str, rec: dict[str, Any], raw: str | None) -> FileInfo:
        info = cls(id=item_id, parent=rec.get("p", ""), name=rec.get("n", ""), cv=rec.get("v", ""),
                   qxh=rec.get("h", ""), size=int(rec.get("s", 0)), mime=rec.get("m", ""),
                   modified_at=rec.get("t", ""), created_at=rec.get("c", ""), by=rec.get("by", ""),
                   web_url="", raw=raw)
        info.absorb(rec)
        return info

    def absorb(self, stored: dict[str, Any] | None) -> None:
        if stored:
            self.sha, self.blob = stored.get("sha", ""), stored.get("b", "")
            self.stored_cv, self.stored_qxh = stored.get("v", ""), stored.get("h", "")
            self.stored_size = int(stored.get("s", -1))
            self.was_orphan = bool(stored.get("o"))

    def have_content(self) -> bool:
        if not self.sha:
            return False
        if self.cv and self.cv == self.stored_cv:
            return True
        return bool(self.qxh) and self.qxh == self.stored_qxh and self.size == self.stored_size

    def record(self, gen: str, *, orphan: bool = False, web_url: str = "") -> str:
        return encode({"p": self.parent, "n": self.name, "v": self.cv, "h": self.qxh, "s": self.size,
                       "m": self.mime, "t": self.modified_at, "c": self.created_at, "by": self.by,
                       "w": web_url or self.web_url, "sha": self.sha, "b": self.blob, "g": gen,
                       "o": 1 if orphan else None})


def path_digest(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class Planner:
    """Per-connector decisions; one instance per run."""

    def __init__(self, state: CommittedReads, tree: FolderTree, downloader: Downloader, *, graph_url: str,
                 site_id: str, drive_id: str, drive_web_url: str, scope_folder: str, path_filter: PathFilter,
                 max_bytes: int | None, gen: str, run_marker: str, download: bool = True):
        self.state = state
        self.tree = tree
        self.downloader = downloader
        self.graph_url = graph_url
        self.site_id, self.drive_id, self.drive_web_url = site_id, drive_id, drive_web_url
        self.scope_folder = scope_folder
        self.filter = path_filter
        self.max_bytes = max_bytes
        self.gen = gen
        self.run_marker = run_marker
        self.download = download

    def in_scope(self, path: str) -> bool:
        rel = path
        if self.scope_folder:
            prefix = self.scope_folder + "/"
            if not path.casefold().startswith(prefix.casefold()):
                return False
            rel = path[len(prefix):]
        return self.filter.wants_file(rel)

    def web_url_for(self, path: str) -> str:
        return f"{self.drive_web_url}/{quote(path)}" if self.drive_web_url else ""

    def delete_unit(self, item_id: str, sent: str | None, path: str = "") -> Unit:
        aux = [AuxWrite(ITEMS, item_id, None), AuxWrite(ORPHANS, item_id, None), AuxWrite(RETRY, item_id, None)]
        return Unit(Delete(item_id, {"path": "/" + path} if path else {}) if sent else None, aux)

    def evaluate(self, files: list[FileInfo], *, final: bool = False) -> Iterator[Unit]:
        """Decide each file; download what is new; yields units in input order."""
        if not files:
            return
        self.tree.prefetch([f.parent for f in files])
        sent_versions = self.state.versions([f.id for f in files])
        planned: list[tuple[FileInfo, str | None, str | None, Unit | None]] = []
        jobs: list[Job] = []
        for info, sent in zip(files, sent_versions, strict=True):
            folder = self.tree.path(info.parent) if info.parent else None
            if folder is None:
                unit = self._aux_unit(info, orphan=True, web_url="")
                unit.aux.append(AuxWrite(ORPHANS, info.id, "1"))
                if final:
                    unit.failure = Failure(info.id, f"parent folder {info.parent} of {info.name!r} is unknown; "
                                                    "will retry next run")
                planned.append((info, None, sent, unit))
                continue
            path = f"{folder}/{info.name}" if folder else info.name
            if not self.in_scope(path):
                unit = self._aux_unit(info, orphan=False, web_url="")
                if sent:
                    unit.change = Delete(info.id, {"path": "/" + path})
                planned.append((info, path, sent, unit))
                continue
            version = f"{info.cv}|{path_digest(path)}"
            if sent == version and (info.sha or not info.size or not self.download):
                unit = self._aux_unit(info, orphan=False, web_url="")
                unit.unchanged = 1
                planned.append((info, path, sent, unit))
                continue
            if self.max_bytes is not None and info.size > self.max_bytes:
                unit = self._aux_unit(info, orphan=False, web_url="")
                unit.failure = Failure(info.id, f"{path}: larger than max_file_mb ({info.size} bytes)")
                planned.append((info, path, sent, unit))
                continue
            if self.download and not info.have_content():
                jobs.append(Job(info.id, f"{self.graph_url}/drives/{self.drive_id}/items/{info.id}/content",
                                info.download_url, info.qxh, info.size, path))
            planned.append((info, path, sent, None))
        fetched = self._fetched(jobs)
        for info, path, _sent, unit in planned:
            if unit is not None:
                yield unit
                continue
            assert path is not None
            if self.download and not info.have_content():
                got = next(fetched)
                if isinstance(got, str):
                    info.sha = info.blob = ""
                    unit = self._aux_unit(info, orphan=False, web_url="")
                    unit.aux.append(AuxWrite(RETRY, info.id, self.run_marker))
                    unit.failure = Failure(info.id, f"{path}: {got}")
                    yield unit
                    continue
                self._take(info, got)
            yield self._upsert(info, path)

    def _fetched(self, jobs: list[Job]) -> Iterator[Fetched | str]:
        """The jobs' results in order, downloaded a batch's worth at a time when asked for: the
        engine commits the batch of one chunk (in the background) while the next one downloads."""
        for start in range(0, len(jobs), BATCH_LIMIT):
            yield from self.downloader.fetch_all(jobs[start:start + BATCH_LIMIT])

    @staticmethod
    def _take(info: FileInfo, got: Fetched) -> None:
        info.sha, info.blob = got.blob.sha256, got.blob.uri
        info.stored_cv, info.stored_qxh, info.stored_size = info.cv, info.qxh, info.size
        info.size = got.blob.size

    def _aux_unit(self, info: FileInfo, *, orphan: bool, web_url: str) -> Unit:
        text = info.record(self.gen, orphan=orphan, web_url=web_url)
        unit = Unit()
        if text != info.raw:
            unit.aux.append(AuxWrite(ITEMS, info.id, text))
        if info.was_orphan and not orphan:
            unit.aux.append(AuxWrite(ORPHANS, info.id, None))
        return unit

    def _upsert(self, info: FileInfo, path: str) -> Unit:
        web_url = info.web_url or self.web_url_for(path)
        metadata = {
            "filename": info.name, "path": "/" + path, "sha256": info.sha, "size": info.size,
            "mime_type": info.mime or "application/octet-stream", "blob": info.blob,
            "source_url": web_url, "web_url": web_url, "modified_at": info.modified_at,
            "created_at": info.created_at, "modified_by": info.by, "item_id": info.id,
            "site_id": self.site_id, "drive_id": self.drive_id, "quick_xor_hash": info.qxh,
        }
        version = f"{info.cv}|{path_digest(path)}"
        unit = self._aux_unit(info, orphan=False, web_url="")
        unit.aux.append(AuxWrite(RETRY, info.id, None))
        unit.change = Upsert(info.id, version, metadata, fingerprint=info.cv)
        return unit
