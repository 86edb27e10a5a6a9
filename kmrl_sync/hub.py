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
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

import redis

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.content import open_store
from kmrl_sync.content.crypto import MAGIC, Ciphers, load_ciphers
from kmrl_sync.content.errors import ContentCorrupt, ContentUnavailable, KeyMissing, StoreUnreachable
from kmrl_sync.content.store import ContentStore
from kmrl_sync.engine.connection import connect_config
from kmrl_sync.engine.docview import read_document
from kmrl_sync.loading.loader import ConfigError, load_config

__all__ = ["ContentCorrupt", "ContentUnavailable", "Hub", "KeyMissing", "StoreUnreachable"]

SPOOL_IN_MEMORY = 8 << 20  # verified content up to this size stays in memory, larger goes to a temp file
READ_CHUNK = 1 << 20
CLIENT_NAME = "kmrl-sync-hub"  # how the hub's connections show in CLIENT LIST


class Hub:
    """Read access to documents and their content, for the hub's workers.

    `blobs` is the content store, as `blobs:` in sync.yaml names it: a folder, `s3://bucket/prefix`
    (credentials from the standard AWS chain), or the StoreSettings `from_config` reads (endpoint,
    region, credential files). A document's `blob` URI is read only from that store: a doc hash
    written by whoever can write to Redis cannot make a worker read some other file of its machine.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        key_prefix: str = "kmrl",
        blobs: str | os.PathLike[str] | StoreSettings | None = None,
        key_file: str | os.PathLike[str] | None = None,
        *,
        redis_password: str | None = None,
        encrypt_fields: tuple[str, ...] = (),
        spool_dir: str | os.PathLike[str] | None = None,
        client: redis.Redis | None = None,
    ) -> None:
        """`client` instead of `redis_url`: a ready redis-py client (from_config passes the one
        `redis.sentinel` or `redis.cluster` describe)."""
        if client is None:
            if redis_url is None:
                raise ValueError("give redis_url (or a client)")
            if redis_url == "embedded":
                raise ValueError("the hub cannot use the embedded Redis (it lives only while a kmrl-sync command "
                                 "runs): point redis.url at the Redis server the daemon and Celery share")
            client = redis.Redis.from_url(redis_url, password=redis_password, socket_connect_timeout=5.0,
                                          socket_timeout=30.0, client_name=CLIENT_NAME)
        self.key_prefix = key_prefix
        self._client = client
        self._settings = _store_settings(blobs)
        # The key file is read now (KeyFileError, a ValueError naming it, when it cannot be used).
        self._ciphers: Ciphers | None = load_ciphers(key_file, encrypt_fields) if key_file is not None else None
        self._spool_dir = os.fspath(spool_dir) if spool_dir is not None else None
        self._lock = threading.Lock()
        self._store: ContentStore | None = None
        self._store_pid = 0

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
        encryption = config.encryption
        return cls(key_prefix=config.key_prefix, blobs=config.blobs,
                   key_file=encryption.key_file if encryption else None,
                   encrypt_fields=encryption.encrypt_fields if encryption else (),
                   client=connect_config(config, client_name=CLIENT_NAME))

    # ----------------------------------------------------------------- documents

    def document(self, document_id: str) -> dict[str, str] | None:
        """The document's metadata (status, sha256, size, filename, ...), or None for an unknown id.

        Fields kept encrypted in Redis (`encryption.encrypt_fields`) are decrypted with the key file;
        one that fails authentication raises ContentCorrupt.

        A deleted document is still answered (`status: deleted`, `deleted_at`): the delete task
        may want to know what it was.
        """
        try:
            # The full metadata: the stored hash is compact (docview restores the derived fields).
            meta = read_document(self._client, self.key_prefix, document_id)
        except ValueError:  # not `<connector>:<native id>`: no document of ours
            return None
        if meta is None or self._ciphers is None:
            return meta
        return self._ciphers.fields.decrypt_fields(document_id, meta)  # ContentCorrupt if a listed one fails

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

    def _content_store(self) -> ContentStore | None:
        """This process's store: opened on first use, and again in a forked child (a Celery prefork
        worker made the Hub at import time), whose parent's connections it must not share."""
        if self._settings is None:
            return None
        with self._lock:
            if self._store is None or self._store_pid != os.getpid():
                cipher = self._ciphers.content if self._ciphers is not None else None
                self._store, self._store_pid = open_store(self._settings, cipher), os.getpid()
            return self._store

    def _open_stored(self, document_id: str, uri: str) -> BinaryIO:
        store = self._content_store()
        if store is None:
            raise ContentUnavailable(f"{document_id}: its content is at {uri}, and this hub has no content store")
        try:
            store.digest_of(uri)
        except ContentUnavailable:
            raise ContentUnavailable(f"{document_id}: its content {uri} is outside the hub's content store "
                                     f"{store.name}") from None
        try:
            return store.open_plain(uri)
        except KeyMissing:
            raise
        except StoreUnreachable as exc:
            raise StoreUnreachable(f"{document_id}: {exc}") from None
        except ContentUnavailable as exc:
            raise ContentUnavailable(f"{document_id}: its content is gone: {exc}") from None
        except OSError as exc:
            raise ContentUnavailable(f"{document_id}: cannot open its content {uri}: {exc.strerror or exc}") from None

    def _verified(self, document_id: str, stored: IO[bytes], sha256: str, size: int) -> BinaryIO:
        """The whole content in a private temporary file, once its size and sha256 are the document's."""
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=self._spool_dir)  # noqa: SIM115
        hasher, seen = hashlib.sha256(), 0
        try:
            with stored:
                while chunk := stored.read(READ_CHUNK):
                    if seen == 0 and self._ciphers is None and chunk.startswith(MAGIC):
                        raise KeyMissing(f"{document_id}: its content is stored encrypted, and this hub has "
                                         "no key file (encryption.key_file)")
                    seen += len(chunk)
                    if seen > size:
                        raise ContentCorrupt(f"{document_id}: the stored content is longer than its {size} bytes")
                    hasher.update(chunk)
                    spool.write(chunk)
            if seen != size:
                raise ContentCorrupt(f"{document_id}: the stored content has {seen} bytes, not {size}")
            if hasher.hexdigest() != sha256:
                raise ContentCorrupt(f"{document_id}: the stored content does not match its sha256")
        except StoreUnreachable as exc:  # the connection failed half-way through the content
            spool.close()
            raise StoreUnreachable(f"{document_id}: {exc}") from None
        except BaseException:
            spool.close()
            raise
        spool.seek(0)
        return spool  # type: ignore[return-value]

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the connections (a Hub used after this reconnects)."""
        self._client.close()
        with self._lock:
            store, self._store = self._store, None
        if store is not None and self._store_pid == os.getpid():
            store.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Hub(key_prefix={self.key_prefix!r}, blobs={self._settings.url if self._settings else None!r})"


def _store_settings(blobs: str | os.PathLike[str] | StoreSettings | None) -> StoreSettings | None:
    if blobs is None or isinstance(blobs, StoreSettings):
        return blobs
    text = os.fspath(blobs)
    if text.startswith("s3://"):
        bucket, _, prefix = text.removeprefix("s3://").partition("/")
        return StoreSettings(bucket=bucket, prefix=prefix.strip("/"))
    return StoreSettings(folder=Path(text).resolve())
