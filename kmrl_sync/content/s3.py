"""The content store in an S3-compatible bucket (AWS S3, MinIO), for workers on other machines.

Objects are content-addressed like the folder's: `<prefix>/sha256/<first two hex>/<sha256>`, the
digest of the plaintext. A put hashes the content first (in memory up to SPOOL_LIMIT, larger content
spooled to an unlinked temporary file while it is hashed, so memory stays bounded whatever the
size), hands the upload to a small thread pool and returns the BlobRef at once; `flush()` waits for
every upload handed over before it. So a sequential caller (the filesystem snapshot) keeps several
uploads in flight, and the engine's flush before each commit is still the point where everything the
batch refers to is stored.

An object already there is not stored again: small content goes up in one conditional PUT
(If-None-Match: *) that S3 refuses with 412 when the key exists, large content is asked about first
(HEAD) and not sent at all. Either way an existing object is then copied onto itself (server-side,
MetadataDirective=REPLACE), which gives it a fresh LastModified, the freshness a grace-period gc
relies on (content/store.py). A PUT carries the content's SHA-256 (ChecksumSHA256): S3 and MinIO
check it on receipt and refuse a mismatch, and a PUT returns only once the object is durably
stored. Large content goes
through boto3's managed transfer (multipart, every part checksummed with SHA-256, a bounded number of
parts in memory); a process killed mid-way leaves an incomplete multipart upload, which
`list_leftovers` reports and `delete_leftover` aborts. No object ever holds partial content.

An outage behaves like a Redis outage: boto3 retries each request itself (standard mode, with
backoff; no retry loop here), then the upload fails, and `flush()` raises BlobWriteError naming the
store, so the batch is not committed and the run fails; the next run redoes it. An upload that
failed is kept and tried again by the next put or flush of this store (so no later flush can return
while content put before it is missing), then dropped once stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

import boto3
import botocore.config
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from kmrl_sync.config.models import StoreSettings
from kmrl_sync.content.store import (
    DIGEST,
    BlobRef,
    BlobWriteError,
    Cipher,
    ContentStore,
    ContentUnavailable,
    Leftover,
    StoredObject,
    StoreUnreachable,
    capped,
)
from kmrl_sync.display import clipped

__all__ = ["S3Store"]

SPOOL_LIMIT = 8 << 20  # content up to this size is uploaded from memory in one PUT; larger: multipart
UPLOAD_THREADS = 8  # uploads in flight: one PUT is mostly waiting for the network
MAX_PENDING_BYTES = 16 << 20  # content handed to the pool but not yet uploaded, held in memory
MAX_ATTEMPTS = 4  # per request, boto3's standard retry mode (exponential backoff with jitter)
COPY_LIMIT = 5 << 30  # CopyObject's limit; a larger object is refreshed with a multipart copy
# A multipart upload holds its parts in flight in memory, a few times over (the part, its checksum
# and signing reads, the socket's buffer): 2 x 5 MB parts added ~65 MB to the peak RSS whatever the
# file's size (64 MB to 1 GB), 4 x 8 MB ~100 MB. One multipart upload at a time keeps that bound when
# several large files wait; the small ones go on meanwhile on the other threads.
PART_SIZE = 5 << 20  # S3's smallest part: objects up to 10,000 parts = 48 GiB
PART_THREADS = 2
MAX_REASON_CHARS = 1000  # of an error's text, in exceptions and failure reasons


@dataclass(slots=True)
class _Upload:
    digest: str
    key: str
    data: bytes | None  # the stored form in memory, or
    spool: IO[bytes] | None  # ... in an unlinked temporary file
    checksum: str  # base64 SHA-256 of the stored form (only for in-memory content)

    @property
    def held(self) -> int:
        return len(self.data) if self.data is not None else 0

    def release(self) -> None:
        self.data = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None


def unreachable(store_name: str, exc: BaseException) -> StoreUnreachable:
    return StoreUnreachable(f"cannot read from the content store {store_name}: {_failure_reason(exc)}")


class _Body(io.RawIOBase):
    """An object's body as it streams in: a connection that fails half-way (reset, timed out, cut
    short) is StoreUnreachable naming the store, like one that fails before the first byte."""

    def __init__(self, body: Any, store_name: str):
        super().__init__()
        self._body = body
        self._store_name = store_name

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self._body.read(None if size is None or size < 0 else size)
        except (BotoCoreError, OSError) as exc:  # botocore wraps urllib3's errors (ResponseStreamingError)
            raise unreachable(self._store_name, exc) from exc

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _failure_reason(exc: BaseException) -> str:
    """What went wrong, from the store's own answer (bounded: it is the server's text)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        reason = f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    else:
        reason = str(exc) or type(exc).__name__
    return clipped(reason, MAX_REASON_CHARS)


class S3Store(ContentStore):
    def __init__(self, settings: StoreSettings, cipher: Cipher | None = None):
        super().__init__(settings, cipher)
        self.bucket = settings.bucket
        self._keys = f"{settings.prefix}/sha256" if settings.prefix else "sha256"
        self._uri_base = f"s3://{self.bucket}/{self._keys}"
        config = botocore.config.Config(
            retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
            connect_timeout=10, read_timeout=60, max_pool_connections=UPLOAD_THREADS + PART_THREADS + 2,
            # an endpoint of its own (MinIO): bucket in the path, no per-bucket DNS names needed
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )
        secret = settings.secret_access_key
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config,
            aws_access_key_id=settings.access_key_id.get_secret_value() if settings.access_key_id else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
        )
        self._transfer = TransferConfig(multipart_threshold=SPOOL_LIMIT, multipart_chunksize=PART_SIZE,
                                        max_concurrency=PART_THREADS)
        self._pool: ThreadPoolExecutor | None = None
        self._multipart = threading.Lock()  # one multipart upload at a time (see PART_THREADS)
        self._lock = threading.Condition()
        self._pending: deque[tuple[Future[None], _Upload]] = deque()
        self._pending_bytes = 0
        self._failed: list[_Upload] = []  # uploads that failed, tried again before the next put or flush

    @property
    def name(self) -> str:
        endpoint = f" at {self.settings.endpoint_url}" if self.settings.endpoint_url else ""
        return f"{self.settings.url}{endpoint}"

    @property
    def uri_base(self) -> str:
        return self._uri_base

    def key(self, digest: str) -> str:
        return f"{self._keys}/{digest[:2]}/{digest}"

    def _error(self, exc: BaseException, doing: str = "write to") -> BlobWriteError:
        return BlobWriteError(f"cannot {doing} the blob store {self.name}: {_failure_reason(exc)}")

    # ----------------------------------------------------------------- writing

    def put_bytes(self, data: bytes) -> BlobRef:
        if self.cipher is not None:
            return self.put_chunks([data])
        digest = hashlib.sha256(data)
        self._submit(_Upload(digest.hexdigest(), self.key(digest.hexdigest()), data, None,
                             base64.b64encode(digest.digest()).decode()))
        return self.ref(digest.hexdigest(), len(data))

    def put_chunks(self, chunks: Iterable[bytes], max_size: int | None = None) -> BlobRef:
        plain, size = hashlib.sha256(), 0

        def plaintext() -> Iterator[bytes]:
            nonlocal size
            for chunk in capped(chunks, max_size):
                plain.update(chunk)
                size += len(chunk)
                yield chunk

        stored = hashlib.sha256()  # of the stored form: the plaintext, or the cipher's output
        parts: list[bytes] = []
        held = 0
        spool: IO[bytes] | None = None
        try:
            for out in (plaintext() if self.cipher is None else self.cipher.encrypt(plaintext())):
                if self.cipher is not None:
                    stored.update(out)
                if spool is None:
                    parts.append(out)
                    held += len(out)
                    if held > SPOOL_LIMIT:
                        spool = self._spool_file()
                        self._spool_write(spool, b"".join(parts))
                        parts = []
                else:
                    self._spool_write(spool, out)
        except BaseException:
            if spool is not None:
                spool.close()
            raise
        digest = plain.hexdigest()
        if spool is not None:
            spool.seek(0)
            self._submit(_Upload(digest, self.key(digest), None, spool, ""))
        else:
            checksum = stored.digest() if self.cipher is not None else plain.digest()
            self._submit(_Upload(digest, self.key(digest), b"".join(parts), None,
                                 base64.b64encode(checksum).decode()))
        return self.ref(digest, size)

    def _spool_file(self) -> IO[bytes]:
        folder = self.settings.spool_dir
        try:
            if folder is not None:
                os.makedirs(folder, exist_ok=True)
            return tempfile.TemporaryFile(dir=folder)  # unlinked: a killed process leaves nothing
        except OSError as exc:
            raise BlobWriteError(f"cannot spool content for the blob store {self.name}: {exc}") from exc

    def _spool_write(self, spool: IO[bytes], data: bytes) -> None:
        try:
            spool.write(data)
        except OSError as exc:
            spool.close()
            raise BlobWriteError(f"cannot spool content for the blob store {self.name}: {exc}") from exc

    def _submit(self, upload: _Upload) -> None:
        self._retry_failed()
        with self._lock:
            while self._pending and self._pending_bytes + upload.held > MAX_PENDING_BYTES:
                self._lock.wait()  # bounded memory: wait for uploads in flight to finish
            if self._pool is None:
                self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-upload")
            future = self._pool.submit(self._upload, upload)
            self._pending.append((future, upload))
            self._pending_bytes += upload.held
        future.add_done_callback(self._done)

    def _done(self, _future: Future[None]) -> None:
        with self._lock:
            self._reap()

    def _reap(self) -> None:
        """Take finished uploads off the front of the queue (the lock is held): failed ones are kept."""
        while self._pending and self._pending[0][0].done():
            future, upload = self._pending.popleft()
            self._pending_bytes -= upload.held
            if future.exception() is not None:
                self._failed.append(upload)
            else:
                upload.release()
        self._lock.notify_all()

    def _upload(self, upload: _Upload) -> None:
        """Store one object unless it is there; refresh its LastModified if it is.

        Content in memory goes up in one conditional PUT (If-None-Match: *): S3 stores it only if
        the key is free and answers 412 otherwise, one request instead of a HEAD and a PUT (the
        bench's 0.67x of a bare uploader was that second request). A server that ignores the
        condition overwrites the object with the same bytes, which is just as correct. Spooled
        (large) content is asked about first, so that it is never sent twice.
        """
        if upload.data is not None:
            try:
                response = self.client.put_object(Bucket=self.bucket, Key=upload.key, Body=upload.data,
                                                  ChecksumSHA256=upload.checksum, IfNoneMatch="*")
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "412"):
                    self._refresh(upload.key, len(upload.data))
                    return
                if code not in ("ConditionalRequestConflict", "409"):  # a concurrent PUT of the same key
                    raise
            else:
                self._check_echo(upload, response)
                return
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=upload.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        else:
            self._refresh(upload.key, head["ContentLength"])
            return
        if upload.data is not None:
            response = self.client.put_object(Bucket=self.bucket, Key=upload.key, Body=upload.data,
                                              ChecksumSHA256=upload.checksum)
            self._check_echo(upload, response)
        else:
            assert upload.spool is not None
            upload.spool.seek(0)
            with self._multipart:
                self.client.upload_fileobj(upload.spool, self.bucket, upload.key, Config=self._transfer,
                                           ExtraArgs={"ChecksumAlgorithm": "SHA256"})

    def _check_echo(self, upload: _Upload, response: dict[str, Any]) -> None:
        echoed = response.get("ChecksumSHA256")
        if echoed and echoed != upload.checksum:
            raise BlobWriteError(f"the blob store {self.name} stored {upload.key} with SHA-256 {echoed}, "
                                 f"not {upload.checksum}")

    def _refresh(self, key: str, size: int) -> None:
        source = {"Bucket": self.bucket, "Key": key}
        if size <= COPY_LIMIT:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource=source, MetadataDirective="REPLACE")
        else:
            self.client.copy(source, self.bucket, key, ExtraArgs={"MetadataDirective": "REPLACE"},
                             Config=self._transfer)

    def _retry_failed(self) -> None:
        """Upload again, in this thread, what failed before: raises BlobWriteError if it still fails."""
        with self._lock:
            failed, self._failed = self._failed, []
        for i, upload in enumerate(failed):
            try:
                self._upload(upload)
            except BlobWriteError:
                with self._lock:
                    self._failed[:0] = failed[i:]
                raise
            except (BotoCoreError, ClientError, OSError) as exc:
                with self._lock:
                    self._failed[:0] = failed[i:]
                raise self._error(exc) from exc
            upload.release()

    def flush(self) -> None:
        """Wait for every upload handed over before this call; BlobWriteError if one is not stored."""
        with self._lock:
            waiting = [future for future, _upload in self._pending]
        for future in waiting:
            future.exception()  # waits; a failed upload is kept in _failed and tried once more below
        with self._lock:
            self._reap()  # those futures' done-callbacks may not have run yet
        self._retry_failed()

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            for upload in self._failed:
                upload.release()
            self._failed = []
        self.client.close()

    def check(self) -> None:
        """The bucket exists and the credentials are accepted (HEAD bucket; writing is not tried)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "reach") from exc

    # ----------------------------------------------------------------- reading

    def open_stored(self, uri_or_digest: str) -> BinaryIO:
        key = self.key(self.digest_of(uri_or_digest))
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise ContentUnavailable(f"{uri_or_digest!r} is not in the content store {self.name}") from None
            raise unreachable(self.name, exc) from exc
        except BotoCoreError as exc:
            raise unreachable(self.name, exc) from exc
        return _Body(body, self.name)  # type: ignore[return-value]

    # ----------------------------------------------------------------- retention

    def list_objects(self) -> Iterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._keys + "/")
        for page in pages:
            for item in page.get("Contents", ()):
                fanout, _, digest = item["Key"].removeprefix(self._keys + "/").partition("/")
                if DIGEST.fullmatch(digest) and fanout == digest[:2]:
                    yield StoredObject(digest, item["Size"], item["LastModified"].timestamp())

    def delete(self, digest: str, *, unless_modified_after: float | None = None) -> bool:
        """HEAD, then DELETE. S3 has no delete conditional on LastModified, so a writer refreshing the
        object in the milliseconds between the two is not seen; LastModified has whole seconds, so
        an object modified in the cut-off's second counts as modified after it."""
        key = self.key(self.digest_of(digest))
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        if unless_modified_after is not None and head["LastModified"].timestamp() + 1 > unless_modified_after:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def list_leftovers(self) -> Iterator[Leftover]:
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                           Prefix=self._keys + "/")
        for page in pages:
            for upload in page.get("Uploads", ()):
                yield Leftover(upload["Key"], 0, upload["Initiated"].timestamp(), upload["UploadId"])

    def delete_leftover(self, leftover: Leftover) -> None:
        if not leftover.upload_id or not leftover.name.startswith(self._keys + "/"):
            raise ValueError(f"{leftover.name!r} is not a leftover of the content store {self.name}")
        with contextlib.suppress(self.client.exceptions.NoSuchUpload):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=leftover.name, UploadId=leftover.upload_id)
