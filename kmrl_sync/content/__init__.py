"""Content storage: the store content goes to (a local folder or an S3 bucket), behind one interface.

`open_store(settings)` is how anything gets a store: the engine for a run, the IMAP connector's
worker processes (from the picklable `store.settings` and `store.cipher`), the hub and the gc.
The interface and its promises are in content/store.py.
"""

from __future__ import annotations

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.content.folder import FolderStore
from kmrl_sync.content.store import Cipher, ContentStore


def open_store(settings: StoreSettings, cipher: Cipher | None = None) -> ContentStore:
    """The store `settings` describe; nothing is contacted until the first read or write."""
    if settings.bucket:
        from kmrl_sync.content.s3 import S3Store  # boto3 costs ~0.2 s to import: only where used

        return S3Store(settings, cipher)
    assert settings.folder is not None
    return FolderStore(settings.folder, cipher)
