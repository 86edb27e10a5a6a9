"""Redis key names, in one place.

A connector's own state and its document hashes share the hash tag `{<connector>}`, so every key one
commit touches lands in the same Redis Cluster slot (the Celery and `list` queues excepted: they keep
the plain names Celery addresses, and need a Redis that is not a Cluster). Workers never build a
document hash's name: the hub API maps a document id to it with `doc_key`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectorKeys:
    prefix: str
    connector: str

    def _own(self, what: str) -> str:
        return f"{self.prefix}:{{{self.connector}}}:{what}"

    @property
    def known(self) -> str:
        """ZSET of "<native id>\0<fingerprint>", scores 0: the documents sent and not deleted since, in
        id order (merge scans page through it), with their cheap change tokens. The version sent is
        the document hash's (docview.py); `reset` deletes this set, so everything is sent again."""
        return self._own("known")

    @property
    def docdefaults(self) -> str:
        """HASH of what every document of the connector shares, written once (docview.py)."""
        return self._own("docdefaults")

    @property
    def legacy_state(self) -> tuple[str, str, str]:
        """Versions (hash), index (zset) and fingerprints (hash) of releases before issue 18, which
        `known` and the document hashes replace; read only to migrate them, then deleted."""
        return self._own("versions"), self._own("index"), self._own("fingerprints")

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

    @property
    def doc_prefix(self) -> str:
        """What the doc key of each of this connector's documents starts with: append the native id.

        Document ids are `<connector>:<native id>`; a batch builds thousands of doc keys, by concatenation.
        """
        return doc_key(self.prefix, f"{self.connector}:")


def doc_key(prefix: str, document_id: str) -> str:
    """The hash of document `<connector>:<native id>`: `<prefix>:doc:{<connector>}:<native id>`.

    The connector's hash tag puts it in the slot of the connector's state, so the commit that writes
    it stays one script on a Redis Cluster. Connector names cannot hold ':' or braces (config's
    CONNECTOR_NAME), so the first ':' ends the connector; an id without one is no document of ours.
    """
    connector, sep, native = document_id.partition(":")
    if not sep or not connector or "{" in connector or "}" in connector:
        raise ValueError(f"not a document id (<connector>:<native id>): {document_id!r}")
    return f"{prefix}:doc:{{{connector}}}:{native}"


def document_id_of(prefix: str, key: str) -> str:
    """The document id a document hash's name stands for (the inverse of `doc_key`)."""
    head = f"{prefix}:doc:{{"
    connector, sep, native = key.removeprefix(head).partition("}:")
    if not key.startswith(head) or not sep:
        raise ValueError(f"not a document hash of prefix {prefix!r}: {key!r}")
    return f"{connector}:{native}"


def legacy_doc_prefix(prefix: str, connector: str) -> str:
    """What the document hashes of releases before issue 18 were named for `connector`, before the
    native id: `<prefix>:doc:<connector>:` (no hash tag); read only to migrate them."""
    return f"{prefix}:doc:{connector}:"


def scan_pattern(literal_prefix: str) -> str:
    """A SCAN MATCH pattern for the keys starting with `literal_prefix`."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in literal_prefix) + "*"


def glob_escaped(text: str) -> str:
    """`text` as a literal inside a SCAN MATCH pattern (Redis globs know `*`, `?`, `[...]` and `\\`)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def doc_keys_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every document hash (blobs gc reads them all, page by page)."""
    return f"{glob_escaped(prefix)}:doc:*"


def lease_keys_pattern(prefix: str) -> str:
    """A SCAN MATCH pattern for every connector's lease (blobs gc spares what running syncs wrote)."""
    return f"{glob_escaped(prefix)}:{{*}}:lease"


def lease_connector(prefix: str, key: str) -> str | None:
    """The connector whose lease `key` is, or None: `lease_keys_pattern`'s `*` also matches a
    connector's other keys that happen to end in `:lease` (an aux key named so)."""
    name = key.removeprefix(f"{prefix}:{{").removesuffix("}:lease")
    if "{" in name or "}" in name:  # connector names hold neither (config's CONNECTOR_NAME)
        return None
    return name if ConnectorKeys(prefix, name).lease == key else None


def gc_lock_key(prefix: str) -> str:
    """The lock one `blobs gc` at a time holds (redis-py's Lock: a token string with a TTL)."""
    return f"{prefix}:blobs-gc"


def events_channel(prefix: str) -> str:
    return f"{prefix}:events"


def heartbeat_key(prefix: str, daemon_id: str) -> str:
    return f"{prefix}:heartbeat:{daemon_id}"


def daemons_key(prefix: str) -> str:
    """Hash daemon id -> JSON {host, pid, started, boot, pidns, start}: daemons that have not exited
    cleanly (heartbeat.py keeps it, `status` reads it)."""
    return f"{prefix}:daemons"


def ratelimit_key(prefix: str, tenant_id: str) -> str:
    """A SharePoint tenant's shared request budget (lua/rate_limit.lua).

    The hash tag `{sharepoint:<tenant>}` keeps it Cluster-safe; it is tiny and recreated on demand,
    so `reset` need not know it.
    """
    return f"{prefix}:{{sharepoint:{tenant_id}}}:ratelimit"


def connectors_set(prefix: str) -> str:
    """Names of every connector that has ever synced, so `status` can list them."""
    return f"{prefix}:connectors"


# --------------------------------------------------------------------------- Celery's keys
# The work queues are kombu's Redis transport's own lists: named as kombu names them, so an
# unmodified Celery worker consumes them.

# kombu's Redis transport: priority N>0 lives on "<queue>\x06\x16<N>", consumed after the plain list.
KOMBU_PRIORITY_SEP = "\x06\x16"
# The priority steps kombu's Redis transport keeps a list for (0, the plain list, is consumed first).
KOMBU_PRIORITY_STEPS = (0, 3, 6, 9)


def celery_queue_key(queue_name: str, level: int) -> str:
    """The list kombu keeps for `queue_name` at priority step `level` (0: the queue's plain name)."""
    return f"{queue_name}{KOMBU_PRIORITY_SEP}{level}" if level else queue_name


def celery_queue_keys(queue_name: str) -> list[str]:
    """Every list of `queue_name`, one per priority step, in the order a worker consumes them."""
    return [celery_queue_key(queue_name, level) for level in KOMBU_PRIORITY_STEPS]


def kombu_bindings(queue_name: str) -> tuple[tuple[str, ...], str]:
    """The binding sets a Celery client declares for `queue_name` (routing for exchange publishes), and
    the member it adds to each."""
    member = f"{queue_name}{KOMBU_PRIORITY_SEP}{KOMBU_PRIORITY_SEP}{queue_name}"
    return (f"_kombu.binding.{queue_name}", f"_kombu.binding_permanent.{queue_name}"), member


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
