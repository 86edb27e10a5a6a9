"""Turning one delta page, or one pass over the stored item table, into batches.

Crash safety: file changes travel with their own record writes, so any prefix of a page's batches
is consistent. Folder records travel only in the page's last batch, with the cursor: if we crash
before it, the replayed page detects the same folder moves/deletions again (the stored records
still hold the old parent and name) and redoes the descendant updates, which the commit script
then skips where they were already sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kmrl_sync.display import clipped
from kmrl_sync.engine.documents import BATCH_LIMIT, AuxWrite, Batch, Failure

from .delta import DOWNLOAD_URL, SELECT, Page, kind_of, last_wins, name_of, parent_of
from .http import GraphError, GraphHttp
from .plan import FileInfo, Planner, Unit
from .reads import CommittedReads
from .tree import ITEMS, ORPHANS, RETRY, STAGE, FolderTree, decode, encode

AUX_LIMIT = 4 * BATCH_LIMIT  # aux ops per batch: bounds one Lua call's ARGV
EVAL_CHUNK = 200  # files evaluated (and downloaded) together outside a page


class Packer:
    """Units in, batches of at most BATCH_LIMIT changes out; the cursor rides on `final`."""

    def __init__(self) -> None:
        self.batch = Batch()

    def add(self, unit: Unit) -> Batch | None:
        b = self.batch
        if unit.change is not None:
            b.changes.append(unit.change)
        b.aux.extend(unit.aux)
        if unit.failure is not None:
            b.failures.append(unit.failure)
        b.unchanged += unit.unchanged
        if len(b.changes) >= BATCH_LIMIT or len(b.aux) >= AUX_LIMIT:
            self.batch = Batch()
            return b
        return None

    def feed(self, units: Iterator[Unit]) -> Iterator[Batch]:
        for unit in units:
            full = self.add(unit)
            if full is not None:
                yield full

    def final(self, cursor: str | None, aux: list[AuxWrite] | None = None) -> Batch:
        b, self.batch = self.batch, Batch()
        b.aux.extend(aux or [])
        b.cursor = cursor
        return b


class Passes:
    def __init__(self, connector: Any, reads: CommittedReads, planner: Planner, tree: FolderTree, http: GraphHttp):
        self.c = connector
        self.state = reads
        self.planner = planner
        self.tree = tree
        self.http = http

    # ------------------------------------------------------------------ one delta page

    def _fold(self, items: list[dict[str, Any]]) -> tuple[list[AuxWrite], set[str], set[str],
                                                          list[FileInfo], list[str]]:
        """Apply the folders of `items` to the tree; return (folder record writes, moved folder ids,
        deleted folder ids, live files, file tombstone ids)."""
        gen = self.planner.gen
        ids = [i["id"] for i in items]
        raws = dict(zip(ids, self.state.aux_get(ITEMS, ids), strict=True)) if ids else {}
        folder_aux: list[AuxWrite] = []
        moved: set[str] = set()
        deleted: set[str] = set()
        files: list[FileInfo] = []
        tombstones: list[str] = []
        for item in items:
            item_id, kind, raw = item["id"], kind_of(item), raws[item["id"]]
            stored = decode(raw)
            if kind == "folder":
                parent, name = parent_of(item), name_of(item)
                if not parent:
                    continue
                if stored and stored.get("f") and (stored.get("p"), stored.get("n")) != (parent, name):
                    moved.add(item_id)
                self.tree.set(item_id, parent, name)
                text = encode({"p": parent, "n": name, "f": 1, "g": gen})
                if text != raw:
                    folder_aux.append(AuxWrite(ITEMS, item_id, text))
            elif kind == "deleted":
                if "folder" in item or (stored and stored.get("f")):
                    deleted.add(item_id)
                    self.tree.drop(item_id)
                    folder_aux.append(AuxWrite(ITEMS, item_id, None))
                else:
                    tombstones.append(item_id)
            else:
                files.append(FileInfo.from_item(item, stored, raw))
        return folder_aux, moved, deleted, files, tombstones

    def page(self, page: Page, cursor: str, clear_stage: bool = False) -> Iterator[Batch]:
        """Apply one page of a full enumeration directly (Graph lists parents before children)."""
        items = [i for i in last_wins(page.items) if kind_of(i) in ("folder", "file", "deleted")]
        folder_aux, moved, deleted, files, tombstones = self._fold(items)
        packer = Packer()
        if clear_stage:  # a previous incremental round died with a 410: its staged items are void
            packer.batch.aux.append(AuxWrite(STAGE, None))
        yield from packer.feed(Unit(failure=failure) for failure in page.rejected)
        yield from packer.feed(self._deletes(tombstones))
        yield from packer.feed(self.planner.evaluate(files))
        if moved or deleted:
            yield from packer.feed(self.descendants(moved, deleted, {i["id"] for i in items}, folder_aux))
        yield packer.final(cursor, folder_aux)
        self.tree.committed()  # resumed: the engine committed that batch, with the page's folder records

    def stage_page(self, page: Page, cursor: str) -> Batch:
        """An incremental page is only staged (last occurrence wins, across pages too): its items
        arrive in change order, a child possibly before its renamed parent, so nothing is applied
        until the round is complete (see `apply_stage`)."""
        aux = []
        for item in last_wins(page.items):
            if kind_of(item) in ("folder", "file", "deleted"):
                item.pop(DOWNLOAD_URL, None)  # minutes-lived and secret-bearing: never persisted
                aux.append(AuxWrite(STAGE, item["id"], json.dumps(item, separators=(",", ":"))))
        return Batch(aux=aux, cursor=cursor, failures=list(page.rejected))

    def apply_stage(self, cursor: str) -> Iterator[Batch]:
        """Apply a complete incremental round: folders first, then files, then descendants."""
        folder_items: list[dict[str, Any]] = []
        for item_id, raw in self.state.aux_scan(STAGE):
            item = decode(raw)
            if item is None or kind_of(item) == "file":
                continue
            if kind_of(item) == "folder" or "folder" in item:
                folder_items.append(item)
            else:  # a tombstone without facet: a folder if we know it as one
                rec = decode(self.state.aux_get(ITEMS, [item_id])[0])
                if rec and rec.get("f"):
                    folder_items.append(item)
        folder_aux, moved, deleted, _, _ = self._fold(folder_items)
        folder_aux += [AuxWrite(STAGE, i["id"], None) for i in folder_items]
        folder_ids = {i["id"] for i in folder_items}
        done: set[str] = set(folder_ids)
        packer = Packer()
        chunk: list[dict[str, Any]] = []

        def flush() -> Iterator[Batch]:
            _, _, _, files, tombstones = self._fold(chunk)
            units = list(self._deletes(tombstones))
            for unit, item_id in zip(units, tombstones, strict=True):
                unit.aux.append(AuxWrite(STAGE, item_id, None))
            yield from packer.feed(iter(units))
            for unit, info in zip(self.planner.evaluate(files), files, strict=True):
                unit.aux.append(AuxWrite(STAGE, info.id, None))
                full = packer.add(unit)
                if full is not None:
                    yield full

        for item_id, raw in self.state.aux_scan(STAGE):
            if item_id in done:
                continue
            item = decode(raw)
            if item is None:
                continue
            done.add(item_id)
            chunk.append(item)
            if len(chunk) >= EVAL_CHUNK:
                yield from flush()
                chunk = []
        yield from flush()
        if moved or deleted:
            yield from packer.feed(self.descendants(moved, deleted, done, folder_aux))
        yield packer.final(cursor, folder_aux)
        self.tree.committed()

    def _deletes(self, ids: list[str]) -> Iterator[Unit]:
        for start in range(0, len(ids), BATCH_LIMIT):
            chunk = ids[start:start + BATCH_LIMIT]
            for item_id, sent in zip(chunk, self.state.versions(chunk), strict=True):
                yield self.planner.delete_unit(item_id, sent)

    # ------------------------------------------------------------------ folder moves and deletions

    def _status(self, folder_id: str, moved: set[str], deleted: set[str], memo: dict[str, str]) -> str:
        """'d' below a deleted folder, 'm' below a moved one, '' otherwise (or unknown)."""
        chain: list[str] = []
        node = folder_id
        top = ""
        while node and node != self.tree.root_id:
            if node in memo:
                top = memo[node]
                break
            chain.append(node)
            if node in deleted:
                break
            if node not in self.tree:
                self.tree.prefetch([node])
            entry = self.tree.get(node)
            if entry is None:
                break
            node = entry[0]
        status = top
        for n in reversed(chain):
            if n in deleted or status == "d":
                status = "d"
            elif n in moved or status == "m":
                status = "m"
            memo[n] = status
        return memo.get(folder_id, status)

    def descendants(self, moved: set[str], deleted: set[str], skip: set[str],
                    folder_aux: list[AuxWrite]) -> Iterator[Unit]:
        """Everything below a moved folder gets its new path; below a deleted one, deleted."""
        memo: dict[str, str] = {}
        to_delete: list[str] = []
        to_move: list[FileInfo] = []
        for item_id, raw in self.state.aux_scan(ITEMS):
            if item_id in skip:
                continue
            rec = decode(raw)
            if not rec or not rec.get("p"):
                continue
            status = self._status(rec["p"], moved, deleted, memo)
            if status == "d":
                if rec.get("f"):
                    folder_aux.append(AuxWrite(ITEMS, item_id, None))
                    deleted.add(item_id)
                    self.tree.drop(item_id)
                else:
                    to_delete.append(item_id)
            elif status == "m" and not rec.get("f"):
                to_move.append(FileInfo.from_record(item_id, rec, raw))
            if len(to_delete) >= BATCH_LIMIT:
                yield from self._deletes(to_delete)
                to_delete = []
            if len(to_move) >= EVAL_CHUNK:
                yield from self.planner.evaluate(to_move)
                to_move = []
        yield from self._deletes(to_delete)
        yield from self.planner.evaluate(to_move)

    # ------------------------------------------------------------------ end of a run

    def orphans(self) -> Iterator[Unit]:
        """Files whose parent was unknown when seen (child listed before parent): resolve now."""
        chunk: list[str] = []
        for item_id, _ in self.state.aux_scan(ORPHANS):
            chunk.append(item_id)
            if len(chunk) >= EVAL_CHUNK:
                yield from self._records_to_eval(chunk)
                chunk = []
        yield from self._records_to_eval(chunk)

    def _records_to_eval(self, ids: list[str]) -> Iterator[Unit]:
        infos: list[FileInfo] = []
        for item_id, raw in zip(ids, self.state.aux_get(ITEMS, ids), strict=True):
            rec = decode(raw)
            if rec is None or rec.get("f"):
                yield Unit(aux=[AuxWrite(ORPHANS, item_id, None)])
            else:
                infos.append(FileInfo.from_record(item_id, rec, raw))
        yield from self.planner.evaluate(infos, final=True)

    def retries(self, drive_id: str) -> Iterator[Unit]:
        """Files whose content failed in an earlier run: look them up again and fetch."""
        batch: list[FileInfo] = []
        for item_id, marker in self.state.aux_scan(RETRY):
            if marker == self.planner.run_marker or self.c.context.should_stop():
                continue
            try:
                item = self.http.get_json(f"drives/{drive_id}/items/{item_id}?$select={SELECT}")
            except GraphError as exc:
                if exc.status == 404:
                    yield self.planner.delete_unit(item_id, self.state.versions([item_id])[0])
                else:
                    yield Unit(failure=Failure(item_id, f"cannot look up item: HTTP {exc.status} {exc.code}"))
                continue
            if item.get("id") != item_id:  # the answer is about another item, or none
                yield Unit(failure=Failure(item_id, f"Graph answered the look-up of {item_id} with another "
                                                    f"item ({clipped(repr(item.get('id')), 120)})"))
                continue
            if kind_of(item) != "file":
                yield Unit(aux=[AuxWrite(RETRY, item_id, None)])
                continue
            raw = self.state.aux_get(ITEMS, [item_id])[0]
            batch.append(FileInfo.from_item(item, decode(raw), raw))
            if len(batch) >= EVAL_CHUNK:
                yield from self.planner.evaluate(batch)
                batch = []
        yield from self.planner.evaluate(batch)

    def sweep(self) -> Iterator[Unit]:
        """After a full enumeration: every document and record not seen in it is gone."""
        gen = self.planner.gen
        known: list[str] = []

        def stale_known(ids: list[str]) -> Iterator[Unit]:
            for item_id, raw in zip(ids, self.state.aux_get(ITEMS, ids), strict=True):
                rec = decode(raw)
                if rec is None or rec.get("g") != gen:
                    yield self.planner.delete_unit(item_id, "sent")

        for item_id, _fingerprint in self.state.iter_known():
            known.append(item_id)
            if len(known) >= BATCH_LIMIT:
                yield from stale_known(known)
                known = []
        yield from stale_known(known)
        for item_id, raw in self.state.aux_scan(ITEMS):  # records of folders and unsent files
            rec = decode(raw)
            if rec is None or rec.get("g") != gen:
                yield Unit(aux=[AuxWrite(ITEMS, item_id, None), AuxWrite(ORPHANS, item_id, None)])
