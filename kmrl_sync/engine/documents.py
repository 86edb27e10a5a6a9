"""What a connector hands to the engine: batches of changes plus the checkpoint after them.

A connector never commits anything itself. It yields a `Batch`; the engine stores blobs durably,
commits the batch atomically with the batch's cursor, and only then asks the connector for the next
one. So a connector that crashes (or is killed) resumes from its last committed cursor, and the
at-least-once replay is made exactly-once by the version check inside the commit script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BATCH_LIMIT = 500  # documents per commit: one Lua call, bounded latency, bounded ARGV size


@dataclass(slots=True)
class Upsert:
    """A document that exists at `version` (content hash, eTag, ...).

    `metadata` holds the hub-facing fields (filename, sha256, size, mime_type, blob, source_url,
    modified_at, source-specific fields). `fingerprint` is the connector's cheap change token,
    stored so the next run can tell "unchanged" without reading content.
    """

    native_id: str
    version: str
    metadata: dict[str, Any]
    fingerprint: str = ""

    def stored_as(self, sha256: str, size: int, blob: str) -> None:
        """Its content is in the blob store now: the digest is the version, and the hub is told where."""
        self.version = sha256
        self.metadata.update(sha256=sha256, size=size, blob=blob)


@dataclass(slots=True)
class Delete:
    native_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


Change = Upsert | Delete


@dataclass(slots=True)
class AuxWrite:
    """A write to one of the connector's own keys, committed atomically with the batch.

    `value=None` deletes the field; `field=None` deletes the whole key.
    """

    key: str
    field: str | None
    value: str | None = None


@dataclass(slots=True)
class Failure:
    """A document that could not be read; reported, counted, and the run goes on."""

    native_id: str | None
    error: str


@dataclass(slots=True)
class Batch:
    changes: list[Change] = field(default_factory=list)
    cursor: str | None = None  # None keeps the stored cursor
    aux: list[AuxWrite] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    progress_total: int | None = None  # best estimate of the documents in this run, for display
    unchanged: int = 0  # documents the connector saw and skipped as unchanged (fingerprint match)

    def __len__(self) -> int:
        return len(self.changes)
