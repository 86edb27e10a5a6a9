"""The connector's checkpoint, stored by the engine with each batch as one JSON string.

- phase "full": a full (token-less or post-410) enumeration is in flight; `next_link` resumes it.
- phase "incremental": `next_link` (if set) resumes an in-flight delta round started from
  `delta_link`; without `next_link` the next run starts from `delta_link`.
- phase "apply": every page of an incremental round is staged (aux hash `stage`); applying it is
  pending, then `delta_link` (already the new one) is used.
- phase "finish": every page of a full enumeration is committed; orphans and the sweep of items
  not seen in generation `gen` are pending; `delta_link` is the new link to use afterwards.
`scope` fingerprints the options that decide what is synced; a change forces a full round.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Cursor:
    site_id: str
    drive_id: str
    root_id: str
    drive_web_url: str
    scope: str
    phase: str = "full"
    next_link: str | None = None
    delta_link: str | None = None
    gen: str = ""
    v: int = 1

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> Cursor | None:
        """None for a missing, foreign or unreadable cursor (the run then starts over, fully)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            cursor = cls(**data)
        except (ValueError, TypeError):
            return None
        if cursor.v != 1 or cursor.phase not in ("full", "incremental", "apply", "finish"):
            return None
        if cursor.phase == "incremental" and not (cursor.next_link or cursor.delta_link):
            return None
        return cursor

    def with_(self, **changes: object) -> Cursor:
        return replace(self, **changes)  # type: ignore[arg-type]


def new_generation() -> str:
    """A label unique to one full enumeration; the sweep deletes records whose label differs."""
    return uuid.uuid4().hex[:12]
