"""The connector's reads of its own state, each after every batch it yielded is committed.

The engine commits SharePoint batches in the background (`pipelined_commits`), so the second
half of a page downloads while its first half commits (plan.py fetches a page's content in
chunks of one batch). Everything the connector reads from Redis (its aux hashes, the versions
sent, the index) may have been written by a batch still in flight; every read here waits for
those first, so what it sees is what it would see with each batch committed before the
generator resumed. Waiting costs nothing when no commit is in flight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


class CommittedReads:
    def __init__(self, context: Any):
        self._context = context
        self._state = context.state

    def _wait(self) -> None:
        self._context.wait_committed()

    def aux_get(self, name: str, fields: Sequence[str]) -> list[str | None]:
        self._wait()
        return self._state.aux_get(name, fields)

    def aux_exists(self, name: str) -> bool:
        self._wait()
        return self._state.aux_exists(name)

    def versions(self, native_ids: Sequence[str]) -> list[str | None]:
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
