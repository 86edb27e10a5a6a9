"""Moving a connector's state from the layout of releases before issue 18, at its first run after
the upgrade, so that an upgrade neither sends every document again nor leaves the old hashes behind.

Before: document hashes `<prefix>:doc:<connector>:<id>` (no hash tag) holding the full metadata, and
per connector a versions hash, an index sorted set and a fingerprints hash. After: the tagged, compact
document hashes (docview.py) and the `known` set (commit_batch.lua). The run holds the connector's
lease, so no commit of it runs meanwhile; the run's documents are committed only once the
migration is complete.

Every step can be interrupted and is done again by the next run: `known` is filled from the old index
(adding a member twice changes nothing), each chunk of document hashes moves in one MULTI (old hash
deleted with the new one written, so a hash is either still old or already moved), and the old
state keys go in the last MULTI that also records the layout, which is checked first next time.
Hub lookups of a document not moved yet find nothing for those seconds.
"""

from __future__ import annotations

from kmrl_sync.engine.docview import SCRIPT_FIELDS, Compactor
from kmrl_sync.engine.keys import legacy_doc_prefix, scan_pattern
from kmrl_sync.engine.state import ConnectorState

LAYOUT_FIELD = "@layout"  # in the defaults hash: the state's layout, once it is the current one
LAYOUT = "2"
CHUNK = 500


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def migrate(state: ConnectorState, compactor: Compactor) -> int:
    """Migrate `state`'s connector if it still has the old layout; the number of documents moved."""
    client, keys = state.client, state.keys
    if client.hget(keys.docdefaults, LAYOUT_FIELD) == LAYOUT.encode():
        return 0
    versions, index, fingerprints = keys.legacy_state
    start = 0
    while natives := client.zrange(index, start, start + CHUNK - 1):
        fps = client.hmget(fingerprints, natives)
        client.zadd(keys.known, {native + b"\0" + (fp or b""): 0 for native, fp in zip(natives, fps, strict=True)})
        start += CHUNK
    moved = 0
    chunk: list[bytes] = []
    for key in client.scan_iter(match=scan_pattern(legacy_doc_prefix(state.prefix, state.connector)), count=1000):
        chunk.append(key)
        if len(chunk) == CHUNK:
            moved += _move(state, compactor, chunk, versions)
            chunk = []
    if chunk:
        moved += _move(state, compactor, chunk, versions)
    pipe = client.pipeline(transaction=True)
    pipe.delete(versions, index, fingerprints)
    pipe.hset(keys.docdefaults, LAYOUT_FIELD, LAYOUT)
    pipe.execute()
    return moved


def _move(state: ConnectorState, compactor: Compactor, old_keys: list[bytes], versions_key: str) -> int:
    client, prefix = state.client, state.prefix
    pipe = client.pipeline(transaction=False)
    for key in old_keys:
        pipe.hgetall(key)
    olds = pipe.execute()
    old_prefix = legacy_doc_prefix(prefix, state.connector).encode()
    natives = [key[len(old_prefix):] for key in old_keys]  # bytes, as stored
    sent = client.hmget(versions_key, natives)
    new_prefix = state.keys.doc_prefix.encode()
    pipe = client.pipeline(transaction=True)
    for key, native_bytes, raw, version in zip(old_keys, natives, olds, sent, strict=True):
        if not raw:  # gone meanwhile
            continue
        native = _text(native_bytes)
        old = {_text(k): _text(v) for k, v in raw.items()}
        version_text = _text(version) if version is not None else old.get("version", "")
        metadata = {k: v for k, v in old.items() if k not in SCRIPT_FIELDS}
        stored, same = compactor.compact(native, metadata, version_text)
        new = {k: old[k] for k in ("status", "synced_at", "deleted_at") if k in old}
        if not same:
            new["version"] = version_text
        new.update(stored)
        new_key = new_prefix + native_bytes
        pipe.delete(new_key)
        pipe.hset(new_key, mapping={_bytes(k): _bytes(v) for k, v in new.items()})
        pipe.delete(key)
    relied = compactor.relied_on()
    if relied:
        pipe.hset(state.keys.docdefaults, mapping=dict(relied))
    pipe.execute()
    return len(old_keys)
