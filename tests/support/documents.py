"""A document's metadata as the hub sees it, read from Redis the way the hub reads it.

Tests ask for a document by id; they never build the hash's name nor read its stored (compact) form.
"""

from __future__ import annotations

import redis

from kmrl_sync.engine.keys import doc_key


def document(client: redis.Redis, document_id: str, prefix: str = "kmrl") -> dict[str, str]:
    """Its metadata ({} for an unknown id)."""
    stored = client.hgetall(doc_key(prefix, document_id))
    return {k.decode(): v.decode() for k, v in stored.items()}
