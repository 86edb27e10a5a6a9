"""What reading stored content can go wrong with, for every reader (the hub API, the stores, the
decryption) to raise and catch by one name.

Three kinds, because a caller acts on three: content that is not there, or cannot be opened here
(its key is not in the key file), is reported missing; content that is there but not what was
stored (a flipped byte, a cut, reordered chunks, a swapped object, a wrong key) must never be handed
on as if it were; and a store that cannot be read just now (`StoreUnreachable`) says nothing about
the content: try again later. `ContentUnavailable` and `StoreUnreachable` are the stores' own
(content/store.py), re-exported here.
"""

from __future__ import annotations

from kmrl_sync.content.store import ContentUnavailable, StoreUnreachable

__all__ = ["ContentCorrupt", "ContentUnavailable", "KeyMissing", "StoreUnreachable"]


class KeyMissing(ContentUnavailable):
    """Content (or a field) encrypted under a key that the key file in use does not hold.

    Not corruption: the bytes may be intact, and putting the key back into the key file reads them.
    """


class ContentCorrupt(ValueError):
    """The bytes are not what was stored: an authentication tag or the sha256 does not match, the
    content was cut short or reordered. Raised instead of handing out wrong bytes, never after."""
