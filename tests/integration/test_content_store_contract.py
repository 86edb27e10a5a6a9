"""What every content store promises (kmrl_sync/content/store.py), checked on each real store.

The same tests run against the local folder and against S3 (moto's standalone server on loopback):
content addressing of the plaintext, the encryption hook, reading back, the retention side the gc
builds on (listing, conditional delete, leftovers of killed writers) and the freshness guarantee
that keeps a grace-period gc off content a running sync has just referred to.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr

from kmrl_sync.content import open_store
from kmrl_sync.content.folder import FolderStore
from kmrl_sync.content.store import BlobTooLarge, ContentStore, ContentUnavailable
from tests.support.ciphers import HEADER, XorCipher
from tests.support.waiting import wait_until


@dataclass
class Subject:
    store: ContentStore
    make_leftover: Callable[[], None]  # what a writer killed mid-write leaves behind


def _folder(tmp_path, cipher) -> Subject:
    store = FolderStore(tmp_path / "blobs", cipher)

    def leftover() -> None:
        (tmp_path / "blobs" / "tmp").mkdir(parents=True, exist_ok=True)
        (tmp_path / "blobs" / "tmp" / "123-killed").write_bytes(b"partial")

    return Subject(store, leftover)


def _s3(tmp_path, cipher, request) -> Subject:
    from kmrl_sync.config.models import StoreSettings
    from tests.support.s3_server import ACCESS_KEY, REGION, SECRET_KEY

    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    settings = StoreSettings(bucket=bucket, prefix="some/prefix", endpoint_url=server.endpoint_url, region=REGION,
                             access_key_id=SecretStr(ACCESS_KEY), secret_access_key=SecretStr(SECRET_KEY),
                             spool_dir=tmp_path / "spool")
    store = open_store(settings, cipher)

    def leftover() -> None:  # a multipart upload begun by a process killed before it completed
        server.client().create_multipart_upload(Bucket=bucket, Key=store.key("ab" * 32))

    return Subject(store, leftover)


STORES = {"folder": _folder, "s3": _s3}


@pytest.fixture(params=[(kind, enc) for kind in STORES for enc in (False, True)],
                ids=lambda p: f"{p[0]}{'-encrypted' if p[1] else ''}")
def subject(request, tmp_path) -> Iterator[Subject]:
    kind, encrypted = request.param
    cipher = XorCipher() if encrypted else None
    made = _folder(tmp_path, cipher) if kind == "folder" else _s3(tmp_path, cipher, request)
    yield made
    made.store.close()


def test_content_is_addressed_by_its_plaintext_and_reads_back(subject):
    store = subject.store
    ref = store.put_bytes(b"hello")
    store.flush()
    assert ref.sha256 == hashlib.sha256(b"hello").hexdigest() and ref.size == 5
    assert ref.uri == store.uri(ref.sha256) and ref.uri.endswith(f"/sha256/{ref.sha256[:2]}/{ref.sha256}")
    assert ref.uri.startswith(("file:///", "s3://"))
    assert store.put_chunks(iter([b"hel", b"lo"])) == ref
    with store.open_plain(ref.uri) as f:
        assert f.read() == b"hello"
    with store.open_stored(ref.sha256) as f:
        stored = f.read()
    if store.cipher is None:
        assert stored == b"hello"
    else:
        assert stored.startswith(HEADER) and b"hello" not in stored


def test_large_streamed_content_is_one_object(subject):
    chunks = [os.urandom(1 << 20) for _ in range(10)]  # past every in-memory limit: spooled, multipart
    ref = subject.store.put_chunks(iter(chunks))
    subject.store.flush()
    assert ref.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest() and ref.size == 10 << 20
    with subject.store.open_plain(ref.uri) as f:
        assert f.read() == b"".join(chunks)
    assert list(subject.store.list_leftovers()) == []


@pytest.mark.parametrize("first", [10, 9 << 20])
def test_too_large_content_leaves_nothing_behind(subject, first):
    with pytest.raises(BlobTooLarge):
        subject.store.put_chunks(iter([b"x" * first, b"y" * 10]), max_size=first + 5)
    subject.store.flush()
    assert list(subject.store.list_objects()) == [] and list(subject.store.list_leftovers()) == []


def test_objects_are_listed_and_deleted(subject):
    store = subject.store
    a, b = store.put_bytes(b"a" * 100), store.put_bytes(b"b" * 200)
    store.flush()
    listed = {o.digest: o for o in store.list_objects()}
    assert set(listed) == {a.sha256, b.sha256}
    extra = len(HEADER) if store.cipher is not None else 0
    assert listed[b.sha256].size == 200 + extra
    assert abs(listed[a.sha256].modified - time.time()) < 120
    assert store.delete(a.sha256) is True
    assert store.delete(a.sha256) is False
    with pytest.raises(ContentUnavailable):
        store.open_stored(a.uri)
    assert [o.digest for o in store.list_objects()] == [b.sha256]


def test_a_conditional_delete_keeps_content_written_since(subject):
    store = subject.store
    ref = store.put_bytes(b"fresh")
    store.flush()
    assert store.delete(ref.sha256, unless_modified_after=time.time() - 3600) is False
    with store.open_plain(ref.uri) as f:
        assert f.read() == b"fresh"
    assert store.delete(ref.sha256, unless_modified_after=time.time() + 3600) is True


def test_writing_stored_content_again_refreshes_its_modified_time(subject):
    """The gc's grace period counts from the last time a sync referred to the content, not the first."""
    store = subject.store
    ref = store.put_bytes(b"again")
    store.flush()
    first = next(o.modified for o in store.list_objects() if o.digest == ref.sha256)
    wait_until(lambda: time.time() >= first + 1.1, what="a later second (S3 times have whole seconds)")
    began = time.time()
    assert store.put_chunks(iter([b"aga", b"in"])) == ref
    store.flush()
    refreshed = next(o.modified for o in store.list_objects() if o.digest == ref.sha256)
    assert refreshed > first and refreshed >= int(began)


def test_leftovers_of_killed_writers_are_found_and_removed(subject):
    store = subject.store
    store.put_bytes(b"kept")
    store.flush()
    subject.make_leftover()
    leftovers = list(store.list_leftovers())
    assert len(leftovers) == 1
    store.delete_leftover(leftovers[0])
    store.delete_leftover(leftovers[0])  # already gone: not an error
    assert list(store.list_leftovers()) == []
    assert len(list(store.list_objects())) == 1


def test_foreign_uris_are_not_this_stores(subject):
    with pytest.raises(ContentUnavailable):
        subject.store.open_stored("file:///elsewhere/sha256/ab/" + "ab" * 32)
    with pytest.raises(ContentUnavailable):
        subject.store.open_stored("0" * 64)  # well-formed, never stored


def test_a_worker_process_reopens_the_same_store_from_its_settings(subject):
    store = subject.store
    ref = store.put_bytes(b"shared")
    store.flush()
    settings, cipher = pickle.loads(pickle.dumps((store.settings, store.cipher)))
    with open_store(settings, cipher) as again:
        assert again.uri(ref.sha256) == ref.uri
        with again.open_plain(ref.uri) as f:
            assert f.read() == b"shared"


def test_a_gc_killed_between_its_renames_leaves_a_leftover_that_is_put_back(tmp_path):
    """Folder only: `delete` sets the object aside first; that leftover is restored, never deleted."""
    store = FolderStore(tmp_path / "blobs")
    ref = store.put_bytes(b"referenced")
    final = store.path(ref.uri)
    aside = final.with_name(f".tmp-gc-{ref.sha256}-1234-killed")
    os.rename(final, aside)  # what a gc killed right after its first rename leaves
    [leftover] = list(store.list_leftovers())
    store.delete_leftover(leftover)
    assert final.read_bytes() == b"referenced" and not aside.exists()


def test_an_upload_that_failed_fails_every_flush_until_it_is_stored(tmp_path):
    """S3 only: a failed upload is not forgotten once one flush has reported it, so a second run sharing
    the store cannot commit over it; once S3 is back, the next flush stores it."""
    from kmrl_sync.config.models import StoreSettings
    from kmrl_sync.content.store import BlobWriteError
    from tests.support.s3_server import ACCESS_KEY, REGION, SECRET_KEY, S3Server

    server = S3Server().start()
    try:
        bucket = server.new_bucket()
        store = open_store(StoreSettings(bucket=bucket, endpoint_url=server.endpoint_url, region=REGION,
                                         access_key_id=SecretStr(ACCESS_KEY),
                                         secret_access_key=SecretStr(SECRET_KEY)))
        server.stop()
        ref = store.put_bytes(b"during the outage")
        for _ in range(2):
            with pytest.raises(BlobWriteError, match=rf"cannot write to the blob store s3://{bucket} at "):
                store.flush()
        server.start()
        store.flush()
        with store.open_plain(ref.uri) as f:
            assert f.read() == b"during the outage"
        store.close()
    finally:
        server.stop()
