"""``driveItem: delta`` paging: opaque tokens, server-side cursors, page faults.

A delta request either starts an enumeration (no token: every live item; deltaLink
token: items whose ``seq`` is above the token's) or continues one (nextLink token).
Starting one snapshots the ordered list of item ids into a ``Cursor``; each page then
serialises the *current* state of the next ids, which is what Graph does (state is
"latest", not frozen). The final deltaLink carries the sequence number seen when the
enumeration started, so anything that changed during it is re-sent next time: safe
for the client, and matches Graph's "you may see an item again" contract.

Tokens are base64url JSON that also carry ``$select``/``$top``: clients must follow
links verbatim and this is how Graph behaves too.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .store import Drive, Item

DEFAULT_TOP = 200
MAX_TOP = 1000
MAX_CURSORS = 64  # older in-flight enumerations are evicted -> 410, as a real service may


class DeltaError(Exception):
    """An error response for a delta request (status, Graph error code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ResyncRequired(Exception):
    """410 Gone: the client must restart with a full enumeration from ``location_token``."""

    def __init__(self, drive: Drive, select: list[str] | None, top: int, inner_code: str) -> None:
        super().__init__("resyncRequired")
        self.location_token = encode_token({"k": "f", "d": drive.id, "s": select, "t": top})
        self.inner_code = inner_code


def encode_token(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) and "k" in payload else None


def parse_iso_token(token: str) -> float | None:
    """``token=2024-05-01T09:00:00Z`` (ODB/SharePoint only) -> POSIX time, else None."""
    text = token.strip().replace(" ", "+")  # an unencoded '+' arrives as a space
    if len(text) < 10 or text[4:5] != "-":
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def parse_select(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    return [s.strip() for s in raw.split(",") if s.strip()]


def parse_top(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TOP
    try:
        top = int(raw)
    except ValueError:
        raise DeltaError(400, "invalidRequest", f"Invalid $top value: {raw!r}") from None
    if top < 1:
        raise DeltaError(400, "invalidRequest", "$top must be positive")
    return min(top, MAX_TOP)


@dataclass
class Cursor:
    """A server-side in-flight enumeration."""

    id: int
    drive: Drive
    ids: list[str]
    end_seq: int
    epoch: int
    full: bool
    expired: bool = False


@dataclass
class DeltaFaults:
    """Page-level fault hooks; each list/counter is consumed as pages are served."""

    page_sizes: list[int] = field(default_factory=list)  # override $top page by page; 0 = empty page
    duplicate_in_page: int = 0  # next N non-empty pages repeat their first item at the end
    duplicate_across_pages: int = 0  # next N non-empty continuation pages start with the previous item
    child_before_parent: int = 0  # next N enumerations move one child ahead of its parent
    repeat_page: int = 0  # next N pages return a nextLink that serves the same page again
    resync_next_link_in: int = 0  # the Nth nextLink request from now gets 410 (0 = off)
    resync_inner_code: str = "resyncChangesApplyDifferences"
    include_parents: bool = False  # resume also sends the ancestor chain of changed items


class DeltaEngine:
    """Builds delta pages; callers hold the store lock."""

    def __init__(self, faults: DeltaFaults) -> None:
        self.faults = faults
        self._cursors: OrderedDict[int, Cursor] = OrderedDict()
        self._ids = itertools.count(1)

    # -- cursor management -------------------------------------------------------
    def _new_cursor(self, drive: Drive, ids: list[str], full: bool) -> Cursor:
        if self.faults.child_before_parent > 0 and _move_child_before_parent(drive, ids):
            self.faults.child_before_parent -= 1
        cursor = Cursor(next(self._ids), drive, ids, drive.seq, drive.delta_epoch, full)
        self._cursors[cursor.id] = cursor
        while len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)
        return cursor

    def expire_cursors(self, drive: Drive | None = None) -> int:
        """Invalidate in-flight enumerations (their nextLinks -> 410). Returns how many."""
        n = 0
        for cursor in self._cursors.values():
            if drive is None or cursor.drive is drive:
                cursor.expired = True
                n += 1
        return n

    def full_ids(self, drive: Drive) -> list[str]:
        return [item.id for item in drive.live_items()]

    def changed_ids(self, drive: Drive, since: int) -> list[str]:
        """Items changed after ``since``, each ancestor that is also listed before it."""
        changed = sorted(
            (i for i in drive.items.values() if i.seq > since and not (i.deleted and not i.emit_tombstone)),
            key=lambda i: i.seq,
        )
        wanted = {i.id for i in changed}
        if self.faults.include_parents:
            for item in changed:
                node = item.parent
                while node is not None and not item.deleted and node.id not in wanted:
                    wanted.add(node.id)
                    node = node.parent
        out: list[str] = []
        emitted: set[str] = set()

        def emit(item: Item) -> None:
            chain: list[Item] = []
            node: Item | None = item
            while node is not None and node.id in wanted and node.id not in emitted:
                chain.append(node)
                node = None if node.deleted else node.parent
            for n in reversed(chain):
                emitted.add(n.id)
                out.append(n.id)

        for item in changed:
            emit(item)
        for item_id in wanted - emitted:  # ancestors only reachable via include_parents
            emit(drive.items[item_id])
        return out

    # -- request entry point -----------------------------------------------------------
    def handle(
        self,
        drive: Drive,
        token: str | None,
        select: list[str] | None,
        top: int,
        *,
        serialize: Any,
        link: Any,
    ) -> dict[str, Any]:
        """Answer one delta request. ``serialize(item, select)`` -> dict|None,
        ``link(token)`` -> absolute URL on the Graph origin."""
        if token is None:
            return self._page(
                self._new_cursor(drive, self.full_ids(drive), True), 0, select, top, serialize, link
            )
        if token == "latest":
            return {"value": [], "@odata.deltaLink": link(self._delta_token(drive, drive.seq, select, top))}
        when = parse_iso_token(token)
        if when is not None:
            cursor = self._new_cursor(drive, self.changed_ids(drive, drive.seq_at(when)), False)
            return self._page(cursor, 0, select, top, serialize, link)
        payload = decode_token(token)
        if payload is None or payload.get("d") != drive.id:
            raise DeltaError(400, "invalidRequest", "Invalid or malformed delta token.")
        select, top = payload.get("s"), int(payload.get("t") or DEFAULT_TOP)
        kind = payload["k"]
        if kind == "f":
            return self._page(
                self._new_cursor(drive, self.full_ids(drive), True), 0, select, top, serialize, link
            )
        if kind == "d":
            if payload.get("e") != drive.delta_epoch:
                raise ResyncRequired(drive, select, top, self.faults.resync_inner_code)
            cursor = self._new_cursor(drive, self.changed_ids(drive, int(payload["q"])), False)
            return self._page(cursor, 0, select, top, serialize, link)
        if kind == "n":
            if self.faults.resync_next_link_in > 0:
                self.faults.resync_next_link_in -= 1
                if self.faults.resync_next_link_in == 0:
                    raise ResyncRequired(drive, select, top, self.faults.resync_inner_code)
            found = self._cursors.get(int(payload["c"]))
            if found is None or found.expired or found.drive is not drive:
                raise ResyncRequired(drive, select, top, self.faults.resync_inner_code)
            return self._page(found, int(payload["o"]), select, top, serialize, link)
        raise DeltaError(400, "invalidRequest", "Invalid or malformed delta token.")

    def _delta_token(self, drive: Drive, seq: int, select: list[str] | None, top: int) -> str:
        return encode_token(
            {"k": "d", "d": drive.id, "q": seq, "e": drive.delta_epoch, "s": select, "t": top}
        )

    def _page(
        self, cursor: Cursor, offset: int, select: list[str] | None, top: int, serialize: Any, link: Any
    ) -> dict[str, Any]:
        f = self.faults
        size = f.page_sizes.pop(0) if f.page_sizes else top
        end = min(offset + max(size, 0), len(cursor.ids))
        items = cursor.drive.items
        chosen = [items[i] for i in cursor.ids[offset:end]]
        if cursor.full:
            chosen = [i for i in chosen if not i.deleted]  # a full run never reports deletions
        value = [v for v in (serialize(i, select) for i in chosen) if v is not None]
        if f.duplicate_across_pages > 0 and offset > 0 and end > offset:
            prev = items[cursor.ids[offset - 1]]
            if not (cursor.full and prev.deleted):
                again = serialize(prev, select)
                if again is not None:
                    value.insert(0, again)
                    f.duplicate_across_pages -= 1
        if f.duplicate_in_page > 0 and value:
            value.append(dict(value[0]))
            f.duplicate_in_page -= 1
        if f.repeat_page > 0:
            f.repeat_page -= 1
            end = offset
        body: dict[str, Any] = {"value": value}
        if end < len(cursor.ids):
            token = encode_token(
                {"k": "n", "d": cursor.drive.id, "c": cursor.id, "o": end, "s": select, "t": top}
            )
            body["@odata.nextLink"] = link(token)
        else:
            body["@odata.deltaLink"] = link(self._delta_token(cursor.drive, cursor.end_seq, select, top))
        return body


def _move_child_before_parent(drive: Drive, ids: list[str]) -> bool:
    """Fault: move the first item whose parent is listed earlier to just before it."""
    position = {item_id: n for n, item_id in enumerate(ids)}
    for n, item_id in enumerate(ids):
        item = drive.items[item_id]
        parent = item.parent
        if parent is not None and parent.kind != "root" and position.get(parent.id, n) < n:
            ids.pop(n)
            ids.insert(position[parent.id], item_id)
            return True
    return False
