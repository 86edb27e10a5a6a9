"""The connector's reads of its own state, as they would be with each batch committed first.

The engine commits SharePoint batches in the background (`pipelined_commits`): when the
generator resumes after yielding a batch, every batch before it is committed and that one may
not be yet. So a read waits (`context.wait_committed`) only when the batch handed over last
touches what it reads: an aux field it writes (or an aux key it deletes), an id it changes
(versions), or anything at all for a scan. A page's reads (its items' records, their versions)
concern ids the previous page's batches never wrote, so the next page is read, planned and
downloaded while the last one commits. What a read returns is what it would return with every
yielded batch committed before the generator resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kmrl_sync.engine.documents import Batch


class CommittedReads:
    def __init__(self, context: Any):
        self._context = context
        self._state = context.state
        self._aux_fields: dict[str, set[str]] = {}  # of the batch handed over last: aux key -> fields
        self._aux_dropped: set[str] = set()  # aux keys it deletes whole
        self._changed: set[str] = set()  # native ids it upserts or deletes

    def handed_over(self, batch: Batch) -> None:
        """`batch` is being yielded: until the next one, it may be in flight (the one before is not)."""
        self._aux_fields, self._aux_dropped = {}, set()
        for write in batch.aux:
            if write.field is None:
                self._aux_dropped.add(write.key)
            else:
                self._aux_fields.setdefault(write.key, set()).add(write.field)
        self._changed = {change.native_id for change in batch.changes}

    def _wait(self) -> None:
        self._context.wait_committed()
        self._aux_fields, self._aux_dropped, self._changed = {}, set(), set()  # nothing in flight now

    def aux_get(self, name: str, fields: Sequence[str]) -> list[str | None]:
        pending = self._aux_fields.get(name)
        if name in self._aux_dropped or (pending and not pending.isdisjoint(fields)):
            self._wait()
        return self._state.aux_get(name, fields)

    def versions(self, native_ids: Sequence[str]) -> list[str | None]:
        if self._changed and not self._changed.isdisjoint(native_ids):
            self._wait()
        return self._state.versions(native_ids)

    def aux_scan(self, name: str, count: int = 1000) -> Iterator[tuple[str, str]]:
        return self._waiting(self._state.aux_scan(name, count))

    def iter_known(self) -> Iterator[tuple[str, str]]:
        return self._waiting(self._state.iter_known())

    def _waiting(self, items: Iterator[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        # A scan fetches its next page inside next(): waiting before each one means no page is
        # read while a batch yielded before it is still in flight.
        while True:
            self._wait()
            item = next(items, None)
            if item is None:
                return
            yield item
