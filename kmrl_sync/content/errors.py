"""What reading stored content can go wrong with, for every reader (the hub API, the stores, the
decryption) to raise and catch by one name.

Two kinds, because a caller acts on two: content that is not there, or cannot be opened here (its
key is not in the key file), is reported missing; content that is there but not what was stored (a
flipped byte, a cut, reordered chunks, a swapped object, a wrong key) must never be handed on as if
it were. `ContentUnavailable` is the stores' own (content/store.py), re-exported here.
"""

from __future__ import annotations

from kmrl_sync.content.store import ContentUnavailable

__all__ = ["ContentCorrupt", "ContentUnavailable", "KeyMissing"]


class KeyMissing(ContentUnavailable):
    """Content (or a field) encrypted under a key that the key file in use does not hold.

    Not corruption: the bytes may be intact, and putting the key back into the key file reads them.
    """


class ContentCorrupt(ValueError):
    """The bytes are not what was stored: an authentication tag or the sha256 does not match, the
    content was cut short or reordered. Raised instead of handing out wrong bytes, never after."""
