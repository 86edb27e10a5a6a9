"""The content store: what every place that keeps content (a local folder, an S3 bucket) promises.

Content workers cannot fetch themselves (mail bodies, attachments, SharePoint files, folder
snapshots) is stored by the sha256 of its plaintext under `sha256/<first two hex digits>/<sha256>`,
and a document's `blob` field is the absolute URI of that object (`file:///...` or
`s3://bucket/prefix/...`), valid from any machine that reaches the store.

The promises every store keeps (tests/integration/test_content_store_contract.py checks them for
each):

- Durability: everything `put_*` returned before a `flush()` call is durable when `flush()`
  returns. The engine flushes before each commit, so no commit ever points at content that a crash
  could lose; a store that cannot take content raises BlobWriteError and the batch is not committed.
- Content addressing: the digest and size in a BlobRef are always of the plaintext (the doc's
  sha256 is what workers verify). With a cipher, the stored bytes are `cipher.encrypt(plaintext)`;
  readers get them back with `open_plain`.
- Freshness for retention: a `put_*` of content that is already stored leaves the object with a
  modified time no earlier than the moment the put began (the folder renames a fresh file over it,
  S3 copies the object onto itself). A garbage collector that deletes only unreferenced objects
  older than a grace period longer than a run's write-to-commit time therefore never deletes
  content a running sync has just referred to; `delete(..., unless_modified_after=...)` closes the
  race between its listing and the delete (see each store for how far).
- Leftovers: a process killed mid-write leaves at most temporary files (folder) or incomplete
  multipart uploads (S3): never an object under a digest's name with other bytes. `list_leftovers`
  finds them, `delete_leftover` removes one.

`open_store` (kmrl_sync/content/__init__.py) makes the right store from a StoreSettings.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from kmrl_sync.config.models import StoreSettings

__all__ = [
    "BlobRef",
    "BlobTooLarge",
    "BlobWriteError",
    "Cipher",
    "ContentStore",
    "ContentUnavailable",
    "Leftover",
    "StoredObject",
    "capped",
]

DIGEST = re.compile(r"[0-9a-f]{64}")


class BlobWriteError(RuntimeError):
    """The store could not take content (full, read-only, unreachable, not ours): the run fails.

    Not an OSError on purpose: connectors report an OSError while reading their source as that one
    document's failure ("cannot read"), and a store that cannot be written is nobody's document.
    Nothing is committed that would point at content that is not there; the next run redoes it.
    """


class BlobTooLarge(ValueError):
    """Content over the caller's `max_size`: that document's failure, nothing is left stored."""


class ContentUnavailable(LookupError):
    """The content asked for is not in this store (never stored, deleted, or another store's URI)."""


class StoreUnreachable(ConnectionError):
    """The store could not be read just now (S3 unreachable, refusing, timing out, failing): nothing
    is known about the content, so it is neither missing nor corrupt; a worker retries later. A
    ConnectionError, so task queues that retry on connection errors retry this too."""


class Cipher(Protocol):
    """Encryption at rest (content/crypto.py supplies one); stores call it, never implement it.

    It must pickle: worker processes reopen the store with `open_store(store.settings, store.cipher)`.
    """

    def encrypt(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The stored form of the plaintext chunks, streamed (bounded memory whatever the size)."""
        ...

    def decrypting(self, raw: BinaryIO, sha256: str | None = None) -> BinaryIO:
        """A readable binary file of the plaintext of stored bytes `raw` (raising on tampering);
        `sha256`: the digest the plaintext must have (content-addressed stores know it)."""
        ...


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str  # of the plaintext, whatever the stored form
    size: int  # of the plaintext
    uri: str  # what the document's `blob` field says: absolute, valid from any working directory


@dataclass(frozen=True, slots=True)
class StoredObject:
    digest: str
    size: int  # bytes stored (the ciphertext's size when encrypted)
    modified: float  # epoch seconds: the last write or refresh (see "Freshness" above)


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something a killed writer left behind: nothing refers to it."""

    name: str  # folder: path relative to the store's root; S3: the key of an incomplete upload
    size: int
    modified: float  # epoch seconds: when it was last written (S3: when the upload began)
    upload_id: str = ""  # S3 only: the incomplete multipart upload's id


def capped(chunks: Iterable[bytes], max_size: int | None) -> Iterator[bytes]:
    """The chunks, raising BlobTooLarge as soon as they add up to more than max_size bytes."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_size is not None and size > max_size:
            raise BlobTooLarge(f"content exceeds {max_size} bytes")
        yield chunk


class ContentStore(ABC):
    """One place content is kept. Thread-safe: connectors put from several threads at once."""

    def __init__(self, settings: StoreSettings, cipher: Cipher | None = None):
        self.settings = settings
        self.cipher = cipher

    # ----------------------------------------------------------------- naming

    @property
    @abstractmethod
    def uri_base(self) -> str:
        """The URI every object's URI starts with, up to and including `/sha256` (no slash after)."""

    @property
    def name(self) -> str:
        """How messages name this store: the folder or s3://bucket/prefix."""
        return self.settings.url

    def uri(self, digest: str) -> str:
        """The absolute URI of the object with this digest (the documents' `blob` field)."""
        return f"{self.uri_base}/{digest[:2]}/{digest}"

    def ref(self, digest: str, size: int) -> BlobRef:
        return BlobRef(digest, size, self.uri(digest))

    def digest_of(self, uri_or_digest: str) -> str:
        """The digest a `blob` URI of this store (or a bare digest) names; ContentUnavailable otherwise."""
        if DIGEST.fullmatch(uri_or_digest):
            return uri_or_digest
        rest = uri_or_digest.removeprefix(self.uri_base + "/")
        fanout, _, digest = rest.partition("/")
        if rest != uri_or_digest and DIGEST.fullmatch(digest) and fanout == digest[:2]:
            return digest
        raise ContentUnavailable(f"{uri_or_digest!r} is not an object of the content store {self.name}")

    # ----------------------------------------------------------------- writing

    @abstractmethod
    def put_bytes(self, data: bytes) -> BlobRef:
        """Store `data`; raises BlobWriteError (naming the store and why) when it cannot."""

    @abstractmethod
    def put_chunks(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobRef:
        """Stream content in with bounded memory; BlobTooLarge past max_size (nothing left stored).

        An error raised by `chunks` itself (reading the source failed) propagates as it is: that is
        the document's failure, not the store's.
        """

    @abstractmethod
    def flush(self) -> None:
        """Return once everything put before this call is durable (and verified, for S3)."""

    @abstractmethod
    def check(self) -> None:
        """Reach the store (`kmrl-sync check --connect`): BlobWriteError saying why it cannot be used."""

    def close(self) -> None:  # noqa: B027  (a store with nothing to release needs no override)
        """Release connections and threads; content put but not flushed may not be stored."""

    # ----------------------------------------------------------------- reading (the hub)

    @abstractmethod
    def open_stored(self, uri_or_digest: str) -> BinaryIO:
        """The stored bytes (ciphertext when encrypted) as a readable binary file.

        Raises ContentUnavailable if the object is absent or the URI is not this store's.
        """

    def open_plain(self, uri_or_digest: str) -> BinaryIO:
        """The plaintext: `open_stored`, decrypted through the cipher when one is set."""
        raw = self.open_stored(uri_or_digest)
        # The digest lets the cipher check what it hands out, and read content stored in clear
        # before encryption was turned on (trusted for its digest alone).
        return raw if self.cipher is None else self.cipher.decrypting(raw, sha256=self.digest_of(uri_or_digest))

    # ----------------------------------------------------------------- retention (gc)

    @abstractmethod
    def list_objects(self) -> Iterator[StoredObject]:
        """Every object under a digest's name, in no particular order."""

    @abstractmethod
    def delete(self, digest: str, *, unless_modified_after: float | None = None) -> bool:
        """Delete the object; False if it was not there (or was modified after the given epoch time).

        With `unless_modified_after`, an object a writer refreshed after that time is kept: pass
        the grace period's cut-off, so that a run that referred to the content since is safe.
        """

    @abstractmethod
    def list_leftovers(self) -> Iterator[Leftover]:
        """Temporary files / incomplete uploads of writers; a running writer's are young."""

    @abstractmethod
    def delete_leftover(self, leftover: Leftover) -> None:
        """Remove one leftover; one already gone is not an error."""

    def __enter__(self) -> ContentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
