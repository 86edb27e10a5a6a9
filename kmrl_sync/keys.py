"""Redis key names, in one place.

A connector's own state shares the hash tag `{<connector>}` so every key one Lua script touches
lands in the same Redis Cluster slot. The queue and the document hashes keep plain names because
the rest of the hub (Celery, workers looking documents up by id) addresses them directly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectorKeys:
    prefix: str
    connector: str

    def _own(self, what: str) -> str:
        return f"{self.prefix}:{{{self.connector}}}:{what}"

    @property
    def versions(self) -> str:
        return self._own("versions")

    @property
    def index(self) -> str:
        return self._own("index")

    @property
    def fingerprints(self) -> str:
        return self._own("fingerprints")

    @property
    def cursor(self) -> str:
        return self._own("cursor")

    @property
    def lease(self) -> str:
        return self._own("lease")

    @property
    def stats(self) -> str:
        return self._own("stats")

    @property
    def failures(self) -> str:
        """Documents that failed and have not been committed since (commit_batch.lua keeps it)."""
        return self._own("failures")

    @property
    def auxkeys(self) -> str:
        return self._own("auxkeys")

    def aux(self, name: str) -> str:
        return self._own(f"aux:{name}")

    def stream(self, queue_name: str) -> str:
        """The `stream` format's per-connector stream (Cluster-safe, unlike the Celery lists)."""
        return f"{queue_name}:{{{self.connector}}}"

    def doc(self, document_id: str) -> str:
        return doc_key(self.prefix, document_id)


def doc_key(prefix: str, document_id: str) -> str:
    return f"{prefix}:doc:{document_id}"


def events_channel(prefix: str) -> str:
    return f"{prefix}:events"


def heartbeat_key(prefix: str, daemon_id: str) -> str:
    return f"{prefix}:heartbeat:{daemon_id}"


def connectors_set(prefix: str) -> str:
    """Names of every connector that has ever synced, so `status` can list them."""
    return f"{prefix}:connectors"
