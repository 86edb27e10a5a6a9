"""A document's metadata as the hub sees it, read from Redis the way the hub reads it.

Tests ask for a document by id; they never build the hash's name nor read its stored (compact)
form, except where the stored form itself is what they check.
"""

from __future__ import annotations

import redis

from kmrl_sync.engine.docview import read_document


def document(client: redis.Redis, document_id: str, prefix: str = "kmrl") -> dict[str, str]:
    """Its full metadata ({} for an unknown id)."""
    return read_document(client, prefix, document_id) or {}
