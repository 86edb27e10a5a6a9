"""Per-folder sync state and the connector's private Redis hashes, read through a batch overlay.

Layout (aux names, see `AuxWrite`), all committed atomically with the batch they belong to:

- `folders`        folder name -> FolderState JSON (UIDVALIDITY, last UID sent, UIDNEXT, ...)
- `u:<fid>:<uidvalidity>`  UID -> document native id, one hash per folder incarnation
- `locs`           document native id -> space-separated locations `<fid>:<uidvalidity>:<uid>`
- `atts`           document native id -> JSON list of its attachments' native ids
- `orphans`        document native id -> "1" once its last location went away; resolved (deleted
                   or kept) at the end of a complete run, so a mail moved between two folders is
                   never deleted in between

Keying the UID maps and locations by UIDVALIDITY lets a renumbered folder be rescanned while its
old incarnation still holds the documents' locations; the old one is purged afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from kmrl_sync.engine.documents import AuxWrite

FOLDERS = "folders"
LOCS = "locs"
ATTS = "atts"
ORPHANS = "orphans"


def folder_id(name: str) -> str:
    """A short stable id for a folder name (names may contain any character, ids go in keys)."""
    return hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def uid_map(fid: str, uidvalidity: int) -> str:
    return f"u:{fid}:{uidvalidity}"


def location(fid: str, uidvalidity: int, uid: int) -> str:
    return f"{fid}:{uidvalidity}:{uid}"


@dataclass
class FolderState:
    fid: str
    uidvalidity: int
    last_uid: int = 0  # every UID <= this was fetched and committed (or failed and is retried)
    uidnext: int = 0  # UIDNEXT seen when the folder was last brought up to date
    highestmodseq: int = 0  # CONDSTORE: informational, for operators and status
    count: int = 0  # entries in the UID map: equal to EXISTS when nothing was expunged
    old: list[int] = field(default_factory=list)  # earlier UIDVALIDITYs whose maps await purging

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> FolderState | None:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None


class AuxView:
    """Reads of aux hashes that see the writes of the batch being built, and those writes.

    Batches are committed in the background (`pipelined_commits`): when the generator resumes, the
    batch handed over last may still be in flight. Its writes stay in the read cache (`handed_over()`
    moves them there), so reads of what it touched never go to Redis meanwhile; reads of anything
    else cannot be affected by it. Where that stops being true (a dropped key, a cache reset, a scan
    of a whole hash), `wait_committed` is called first.

    A hash that Redis did not hold when it was first prefetched (a connector's first sync) has
    nothing but what this run wrote: its fields are read from the cache, and a field this run never
    wrote is read as absent without asking Redis. Why: those reads waited behind the commit script
    in flight, about 2 ms each, 1 s of an initial sync of 17,500 mails.

    Memory stays flat however many mails a run goes through (issue 19): the cache is a window of
    at most CACHE_LIMIT fields, the oldest evicted first, and what this run wrote is remembered
    beyond it only in `WrittenFields`, a filter of fixed size. A field it may have written that has
    left the cache is read from Redis (which has it once the batch in flight has landed). The cache
    used to grow to 50,000 fields (about 9 MB) and then forget everything at once, after which
    every read of a first sync went to Redis again.
    """

    CACHE_LIMIT = 10_000

    def __init__(self, state: Any, wait_committed: Callable[[], None] = lambda: None):
        self.state = state
        self.wait_committed = wait_committed
        self._pending: dict[tuple[str, str | None], str | None] = {}
        self._dropped: set[str] = set()
        self._cache: dict[tuple[str, str], str | None] = {}
        self._unsure = False  # the cache no longer covers everything the batch in flight wrote
        self._probed: set[str] = set()  # hashes asked whether Redis holds them (since they were dropped)
        self._absent: set[str] = set()  # ... of which Redis held none: only this run wrote their fields
        self._written: WrittenFields | None = None  # what this run wrote, once a hash is absent

    def __len__(self) -> int:
        return len(self._pending)

    def _known(self, key: str, fld: str) -> tuple[bool, str | None]:
        if (key, fld) in self._pending:
            return True, self._pending[(key, fld)]
        if key in self._dropped:
            return True, None
        if (key, fld) in self._cache:
            return True, self._cache[(key, fld)]
        if key in self._absent and self._written is not None and (key, fld) not in self._written:
            return True, None
        return False, None

    def _settle(self) -> None:
        if self._unsure:
            self.wait_committed()
            self._unsure = False

    def prefetch(self, key: str, fields: list[str]) -> None:
        if key not in self._probed:
            self._settle()
            self._probed.add(key)
            if not self.state.aux_exists(key):
                if self._written is None:  # from now on, every write is remembered there too
                    self._written = WrittenFields()
                    for written in (*self._cache, *self._pending):
                        self._written.add(*written)
                self._absent.add(key)
        missing = list(dict.fromkeys(f for f in fields if not self._known(key, f)[0]))
        if missing:
            self._settle()
            for fld, value in zip(missing, self.state.aux_get(key, missing), strict=True):
                self._cache[(key, fld)] = value

    def get(self, key: str, fld: str) -> str | None:
        known, value = self._known(key, fld)
        if known:
            return value
        self._settle()
        value = self.state.aux_get(key, [fld])[0]
        self._cache[(key, fld)] = value
        return value

    def scan(self, key: str) -> Iterator[tuple[str, str]]:
        """Every field of a committed hash: waits for the batch in flight, which may write to it."""
        self.wait_committed()
        self._unsure = False
        return self.state.aux_scan(key)

    def set(self, key: str, fld: str, value: str | None) -> None:
        self._pending[(key, fld)] = value
        if self._written is not None:
            self._written.add(key, fld)

    def delete(self, key: str, fld: str) -> None:
        self.set(key, fld, None)

    def drop(self, key: str) -> None:
        for k in [k for k in self._pending if k[0] == key]:
            del self._pending[k]
        self._pending[(key, None)] = None
        self._dropped.add(key)

    def writes(self) -> list[AuxWrite]:
        return [AuxWrite(key, fld, value) for (key, fld), value in self._pending.items()]

    def handed_over(self) -> None:
        """The pending writes are in a batch the engine has (committed, or committing in order)."""
        for (key, fld), value in self._pending.items():
            if fld is not None:
                self._cache[(key, fld)] = value
        for key in self._dropped:
            for k in [k for k in self._cache if k[0] == key]:
                del self._cache[k]
            self._probed.discard(key)
            self._absent.discard(key)
            self._unsure = True  # Redis still holds the dropped hash until that batch lands
        self._pending.clear()
        self._dropped.clear()
        if len(self._cache) > self.CACHE_LIMIT:
            # The oldest half goes (insertion order): reading one of those again asks Redis, and
            # as it may be a write of the batch in flight, the next read from Redis waits for it.
            evict = len(self._cache) - self.CACHE_LIMIT // 2
            for k in list(itertools.islice(self._cache, evict)):
                del self._cache[k]
            self._unsure = True


class WrittenFields:
    """Which (hash, field) pairs a run wrote, in a fixed 2 MiB: a Bloom filter.

    It never answers "not written" for a field that was written; it may answer "written" for one
    that was not (about one field in 7,000 after 100,000 writes, one in 120 after 800,000), and
    that only costs a read from Redis. Why not a set: it would grow with every mail of a run.
    Two probes, taken from disjoint bits of one 64-bit hash: each test costs about a microsecond.
    """

    BITS = 1 << 24
    _MASK = BITS - 1

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS // 8)

    def add(self, key: str, fld: str | None) -> None:
        if fld is None:  # a whole hash dropped: nothing to remember per field
            return
        h = hash((key, fld))  # str hashes are keyed per process: fine for a filter that lives in one
        a, b = h & self._MASK, (h >> 24) & self._MASK
        bits = self._bits
        bits[a >> 3] |= 1 << (a & 7)
        bits[b >> 3] |= 1 << (b & 7)

    def __contains__(self, written: tuple[str, str]) -> bool:
        h = hash(written)
        a, b = h & self._MASK, (h >> 24) & self._MASK
        bits = self._bits
        return bool(bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7)))


def split_locations(value: str | None) -> list[str]:
    return value.split() if value else []
