"""The content store in an S3-compatible bucket (AWS S3, MinIO)."""

from __future__ import annotations

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.content.store import BlobWriteError, Cipher


class S3Store:
    def __init__(self, settings: StoreSettings, cipher: Cipher | None = None):
        raise BlobWriteError(f"the S3 content store ({settings.url}) is not available yet in this build")
