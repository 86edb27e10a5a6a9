"""The worker side: what the hub's Celery tasks import to read what kmrl-sync stored.

    hub = Hub.from_config("/etc/kmrl-sync/sync.yaml")
    meta = hub.document(document_id)          # dict of str, encrypted fields decrypted; None if unknown
    with hub.open(document_id) as f:          # the content, decrypted and verified
        data = f.read()

A task never builds a key name, opens a blob by its URI or decrypts by hand: the key layout, the
stores and the encryption can change under it without the task changing.

Verified before handed out: `open` reads the whole content once, decrypting it and hashing it,
into a private temporary file (in memory up to SPOOL_IN_MEMORY, then on disk in `spool_dir`), and
returns that file only once its size and sha256 match the document's. A reader therefore never
sees a byte of content that turns out to be wrong: a streamed reader that verified at the end would
already have handed the caller the bytes before the mismatch, and the caller may have acted on them.
The temporary file is bounded by the document's own recorded size (a stored object that is longer
is refused as soon as it passes that size), and disappears when the file is closed. The cost is one
extra copy of the content, on local disk for content over SPOOL_IN_MEMORY.

Threads and processes: a Hub may be shared by threads (redis-py's client is, the store is opened
per process). It may be made at import time in a Celery prefork worker: nothing is connected until
first use, and a forked child makes its own connections (redis-py's pool notices the fork; the
store is reopened when the process id changes), so the parent's sockets are never shared.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO
from urllib.parse import unquote_to_bytes, urlsplit

import redis

from kmrl_sync.config.loader import ConfigError, load_config
from kmrl_sync.engine.keys import doc_key

__all__ = ["ContentCorrupt", "ContentUnavailable", "Hub"]

SPOOL_IN_MEMORY = 8 << 20  # verified content up to this size stays in memory, larger goes to a temp file
READ_CHUNK = 1 << 20


class ContentUnavailable(LookupError):
    """Nothing to read: an unknown or deleted document, metadata only, or the content is gone."""


class ContentCorrupt(ValueError):
    """The stored bytes are not the document's: sha256, size or authentication tag mismatch.

    Raised instead of returning any of those bytes (see the module docstring).
    """


class Hub:
    """Read access to documents and their content, for the hub's workers.

    `blobs` is where content is stored: the folder (as in `blobs.url` / `blobs.path` of sync.yaml).
    A document's `blob` URI is opened only when it lies inside that store, so a doc hash written
    by anyone who can write to Redis cannot make a worker read some other file of its machine.
    """

    def __init__(
        self,
        redis_url: str,
        key_prefix: str = "kmrl",
        blobs: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        redis_password: str | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if redis_url == "embedded":
            raise ValueError("the hub cannot use the embedded Redis (it lives only while a kmrl-sync command "
                             "runs): point redis.url at the Redis server the daemon and Celery share")
        if key_file is not None:
            raise ValueError("encryption is not supported by this version of the hub")
        self.key_prefix = key_prefix
        self._client = redis.Redis.from_url(redis_url, password=redis_password, socket_connect_timeout=5.0,
                                            socket_timeout=30.0, client_name="kmrl-sync-hub")
        self._folder = Path(blobs).resolve() if blobs is not None else None
        self._spool_dir = os.fspath(spool_dir) if spool_dir is not None else None

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Hub:
        """A Hub from kmrl-sync's own `sync.yaml` (default: `$KMRL_SYNC_CONFIG`, /etc/kmrl-sync/sync.yaml,
        ./sync.yaml), reading only what a worker host needs: Redis, the key prefix, the store and the
        key file. The connectors/ folder and the sources' secrets need not exist there.
        """
        config = load_config(path, with_connectors=False)
        if config.redis_url == "embedded":
            raise ConfigError([f"{config.path}: redis.url: the hub cannot use the embedded Redis (it lives only "
                               "while a kmrl-sync command runs); point it at the Redis server the daemon and "
                               "Celery share"])
        password = config.redis_password.get_secret_value() if config.redis_password else None
        return cls(config.redis_url, config.key_prefix, config.blobs_dir, redis_password=password)

    # ----------------------------------------------------------------- documents

    def document(self, document_id: str) -> dict[str, str] | None:
        """The document's metadata (status, sha256, size, filename, ...), or None for an unknown id.

        A deleted document is still answered (`status: deleted`, `deleted_at`): the delete task
        may want to know what it was.
        """
        raw = self._client.hgetall(doc_key(self.key_prefix, document_id))
        if not raw:
            return None
        return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}

    def open(self, document_id: str) -> BinaryIO:
        """The document's content as a binary file, verified (see the module docstring); close it.

        Raises ContentUnavailable (unknown or deleted document, metadata only, content gone) or
        ContentCorrupt (the stored bytes are not the document's).
        """
        meta = self.document(document_id)
        if meta is None:
            raise ContentUnavailable(f"{document_id}: no such document")
        if meta.get("status") == "deleted":
            raise ContentUnavailable(f"{document_id}: the document was deleted")
        blob = meta.get("blob", "")
        if not blob:
            raise ContentUnavailable(f"{document_id}: no content was stored for it (metadata only)")
        sha256, size = meta.get("sha256", ""), meta.get("size", "")
        if len(sha256) != 64 or not size.isdigit():
            raise ContentCorrupt(f"{document_id}: its metadata has no valid sha256 and size to check the content by")
        stored = self._open_stored(document_id, blob)
        return self._verified(document_id, stored, sha256, int(size))

    # ----------------------------------------------------------------- content

    def _open_stored(self, document_id: str, uri: str) -> BinaryIO:
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise ContentUnavailable(f"{document_id}: its content is at {uri}, which this hub cannot read")
        path = Path(os.fsdecode(unquote_to_bytes(parts.path)))
        if self._folder is None or not path.is_relative_to(self._folder):
            raise ContentUnavailable(f"{document_id}: its content {uri} is outside the hub's store "
                                     f"({self._folder or 'none configured'})")
        try:
            return open(path, "rb")  # handed to _verified, which closes it
        except FileNotFoundError:
            raise ContentUnavailable(f"{document_id}: its content is gone from the store ({uri})") from None
        except OSError as exc:
            raise ContentUnavailable(f"{document_id}: cannot open its content {uri}: {exc.strerror}") from None

    def _verified(self, document_id: str, stored: IO[bytes], sha256: str, size: int) -> BinaryIO:
        """The whole content in a private temporary file, once its size and sha256 are the document's."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self._spool_dir)  # noqa: SIM115
        hasher, seen = hashlib.sha256(), 0
        try:
            with stored:
                while chunk := stored.read(READ_CHUNK):
                    seen += len(chunk)
                    if seen > size:
                        raise ContentCorrupt(f"{document_id}: the stored content is longer than its {size} bytes")
                    hasher.update(chunk)
                    spool.write(chunk)
            if seen != size:
                raise ContentCorrupt(f"{document_id}: the stored content has {seen} bytes, not {size}")
            if hasher.hexdigest() != sha256:
                raise ContentCorrupt(f"{document_id}: the stored content does not match its sha256")
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the connections (a Hub used after this reconnects)."""
        self._client.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hub(key_prefix={self.key_prefix!r}, blobs={self._folder!s})"
