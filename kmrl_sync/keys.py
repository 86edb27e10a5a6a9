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


# Keys of kombu's Redis transport (Celery's broker), by its defaults: a queue of ours by one of
# these names would be a list where Celery keeps a hash or a lock.
KOMBU_KEYS = ("unacked", "unacked_index", "unacked_mutex")
KOMBU_PREFIX = "_kombu."


def queue_name_conflict(prefix: str, name: str) -> str | None:
    """Why `name` cannot be a work queue's name, or None.

    The queue lists and streams live beside kmrl-sync's own keys: a queue named like one of them
    (`kmrl:connectors`, `kmrl:{docs}:cursor`, anything under `<prefix>:`) would break every run
    with WRONGTYPE, or worse, be written into. `check` refuses such a name up front.
    """
    if name == prefix or name.startswith(f"{prefix}:"):
        return (f"{name!r} is inside kmrl-sync's own keys ('{prefix}' and '{prefix}:*', from redis.key_prefix); "
                "choose another name")
    if name.startswith(KOMBU_PREFIX) or name in KOMBU_KEYS:
        return f"{name!r} is a key Celery's Redis transport uses for itself; choose another name"
    return None
