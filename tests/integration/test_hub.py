"""The worker-side API (kmrl_sync.hub) on what a real sync stored, against a real Redis."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import pytest
from pydantic import SecretStr

from kmrl_sync.engine.keys import doc_key
from kmrl_sync.hub import ContentCorrupt, ContentUnavailable, Hub, KeyMissing, StoreUnreachable
from kmrl_sync.loading.loader import ConfigError
from tests.support.redis_server import free_port


@pytest.fixture
def synced(project, tmp_path):
    """A snapshot connector and a metadata-only one, synced; returns the source folders."""
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "small.txt").write_bytes(b"small content")
    (snap / "big.bin").write_bytes(os.urandom(9 << 20))  # over the in-memory spool: verified on disk
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "only-listed.txt").write_text("x")
    project.filesystem("snap", snap, "snapshot: true\n")
    project.filesystem("plain", plain)
    project.cli("sync", "--all", check=True)
    return snap, plain


@pytest.fixture
def hub(project, redis_server):
    with Hub(redis_server.url, "kmrl", project.root / "state" / "blobs") as hub:
        yield hub


def _blob_path(hub: Hub, document_id: str) -> str:
    return unquote(urlsplit(hub.document(document_id)["blob"]).path)


def test_document_and_verified_content(synced, hub):
    snap, _ = synced
    meta = hub.document("snap:small.txt")
    assert meta["filename"] == "small.txt" and meta["status"] == "created"
    with hub.open("snap:small.txt") as f:
        assert f.read() == b"small content"
    with hub.open("snap:big.bin") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256((snap / "big.bin").read_bytes()).hexdigest()
    assert hub.document("snap:nothing-here") is None
    assert hub.document("no connector") is None


def test_unavailable_content(synced, hub, project, redis_client):
    snap, _ = synced
    with pytest.raises(ContentUnavailable, match="metadata only"):
        hub.open("plain:only-listed.txt")
    with pytest.raises(ContentUnavailable, match="no such document"):
        hub.open("snap:nothing-here")
    os.unlink(_blob_path(hub, "snap:small.txt"))
    with pytest.raises(ContentUnavailable, match="gone"):
        hub.open("snap:small.txt")
    (snap / "big.bin").unlink()
    project.cli("sync", "snap", check=True)
    assert hub.document("snap:big.bin")["status"] == "deleted"
    with pytest.raises(ContentUnavailable, match="deleted"):
        hub.open("snap:big.bin")


@pytest.mark.parametrize("tamper", ["flip", "longer", "shorter"])
def test_tampered_content_is_an_error_never_bytes(synced, hub, tamper):
    path = _blob_path(hub, "snap:big.bin")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if tamper == "flip":
        data[len(data) // 2] ^= 1
    elif tamper == "longer":
        data += b"!"
    else:
        del data[-1]
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(ContentCorrupt):
        hub.open("snap:big.bin")


def test_a_blob_outside_the_store_is_not_opened(synced, hub, redis_client, tmp_path):
    secret = tmp_path / "not-content.txt"
    secret.write_bytes(b"private")
    key = doc_key("kmrl", "snap:small.txt")
    redis_client.hset(key, mapping={"blob": secret.as_uri(), "sha256": hashlib.sha256(b"private").hexdigest(),
                                    "size": "7"})
    with pytest.raises(ContentUnavailable, match="outside"):
        hub.open("snap:small.txt")


def test_from_config_needs_only_redis_and_the_store(synced, project, redis_server, tmp_path, monkeypatch):
    """A worker host: its own folder, a sync.yaml naming Redis and the store, no connectors/ folder,
    no state_dir, none of the sources' secrets (a password_file of a connector would not exist)."""
    worker = tmp_path / "worker-host"
    worker.mkdir()
    (worker / "sync.yaml").write_text(textwrap.dedent(f"""\
        redis: {{url: "{redis_server.url}", key_prefix: kmrl}}
        state_dir: /nonexistent/state
        blobs: {{path: {project.root / "state" / "blobs"}}}
        connectors_dir: /nonexistent/connectors
        """))
    monkeypatch.chdir(worker)
    with Hub.from_config("sync.yaml") as hub, hub.open("snap:small.txt") as f:
        assert f.read() == b"small content"
    assert not os.path.exists("/nonexistent")


def test_from_config_refuses_the_embedded_redis(tmp_path):
    (tmp_path / "sync.yaml").write_text("redis: {url: embedded}\n")
    with pytest.raises(ConfigError, match=r"redis\.url: the hub cannot use the embedded Redis"):
        Hub.from_config(tmp_path / "sync.yaml")
    assert not (tmp_path / ".kmrl-sync").exists()


@pytest.fixture
def encrypted(project, tmp_path):
    """A snapshot synced with encryption on (content, and the filename field)."""
    key_file = tmp_path / "keys.json"
    subprocess.run([sys.executable, "-m", "kmrl_sync", "keys", "new", str(key_file)], check=True,
                   capture_output=True)
    project.write_main(f"encryption: {{key_file: {key_file}, encrypt_fields: [filename]}}\n")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "secret.txt").write_bytes(b"falcon budget " * 10_000)
    project.filesystem("snap", snap, "snapshot: true\n")
    project.cli("sync", "snap", check=True)
    return key_file, snap


def test_encrypted_content_and_fields_read_back_through_the_hub(encrypted, project, redis_client):
    _, snap = encrypted
    stored = redis_client.hget(doc_key("kmrl", "snap:secret.txt"), "filename")
    assert b"secret.txt" not in stored  # kept encrypted in Redis
    with Hub.from_config(project.config) as hub:
        assert hub.document("snap:secret.txt")["filename"] == "secret.txt"
        with hub.open("snap:secret.txt") as f:
            assert f.read() == (snap / "secret.txt").read_bytes()
        blob = _blob_path(hub, "snap:secret.txt")
    with open(blob, "rb") as f:
        assert b"falcon" not in f.read()

    with Hub(project.redis_url, "kmrl", project.root / "state" / "blobs") as keyless, \
            pytest.raises(KeyMissing, match="no key file"):
        keyless.open("snap:secret.txt")


@pytest.mark.parametrize("tamper", ["flip", "cut"])
def test_tampered_encrypted_content_is_corrupt(encrypted, project, tamper):
    with Hub.from_config(project.config) as hub:
        path = _blob_path(hub, "snap:secret.txt")
        with open(path, "rb") as f:
            data = bytearray(f.read())
        if tamper == "flip":
            data[len(data) // 2] ^= 1
        else:
            del data[-100:]
        with open(path, "wb") as f:
            f.write(data)
        with pytest.raises(ContentCorrupt):
            hub.open("snap:secret.txt")


def test_a_tampered_encrypted_field_is_corrupt(encrypted, project, redis_client):
    key = doc_key("kmrl", "snap:secret.txt")
    other = redis_client.hget(key, "filename").decode()
    redis_client.hset(key, "filename", other[:-3] + ("AAA" if not other.endswith("AAA") else "BBB"))
    with Hub.from_config(project.config) as hub, pytest.raises(ContentCorrupt):
        hub.document("snap:secret.txt")


def test_content_in_s3_through_the_hub(project, tmp_path, redis_client, s3_server, s3_bucket, monkeypatch):
    """The hub reads a bucket with the store's credential files; an object swapped for other bytes is
    ContentCorrupt, one deleted is ContentUnavailable."""
    project.write_main(s3_server.blobs_yaml(s3_bucket, tmp_path / "s3-secrets"))
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "a.txt").write_bytes(b"alpha " * 1000)
    (snap / "b.txt").write_bytes(b"beta " * 1000)
    project.filesystem("snap", snap, "snapshot: true\n")
    project.cli("sync", "snap", check=True)
    monkeypatch.chdir(tmp_path)
    client = s3_server.client()
    with Hub.from_config(project.config) as hub:
        uri = hub.document("snap:a.txt")["blob"]
        assert uri.startswith(f"s3://{s3_bucket}/")
        with hub.open("snap:a.txt") as f:
            assert f.read() == b"alpha " * 1000
        key = uri.removeprefix(f"s3://{s3_bucket}/")
        client.put_object(Bucket=s3_bucket, Key=key, Body=b"omega " * 1000)
        with pytest.raises(ContentCorrupt):
            hub.open("snap:a.txt")
        client.delete_object(Bucket=s3_bucket, Key=hub.document("snap:b.txt")["blob"].removeprefix(f"s3://{s3_bucket}/"))
        with pytest.raises(ContentUnavailable, match="gone"):
            hub.open("snap:b.txt")


def test_from_config_on_a_redis_cluster(tmp_path, redis_cluster):
    """`redis.cluster: true`: the hub reads each document from its connector's master (the client
    connect_config makes, as every command does)."""
    from tests.integration.test_redis_cluster import _one_name_per_master, _project

    project = _project(tmp_path / "project", redis_cluster)
    names = _one_name_per_master(redis_cluster)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text(f"content of {name}")
        project.filesystem(name, tmp_path / name, "snapshot: true\n")
    project.cli("sync", "--all", check=True)
    with Hub.from_config(project.config) as hub:
        for name in names:
            assert hub.document(f"{name}:a.txt")["status"] == "created"
            with hub.open(f"{name}:a.txt") as f:
                assert f.read() == f"content of {name}".encode()


def test_a_store_that_cannot_be_reached_is_store_unreachable_naming_the_document(project, tmp_path, s3_server,
                                                                                  s3_bucket, monkeypatch):
    """An S3 endpoint that refuses connections says nothing about the content: not "gone" (a worker
    would give the document up), not a write error, but StoreUnreachable, a ConnectionError a task
    retries on, naming the document and the store."""
    secrets_folder = tmp_path / "s3-secrets"
    project.write_main(s3_server.blobs_yaml(s3_bucket, secrets_folder))
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "a.txt").write_bytes(b"alpha " * 1000)
    project.filesystem("snap", snap, "snapshot: true\n")
    project.cli("sync", "snap", check=True)
    dead = f"http://127.0.0.1:{free_port()}"
    project.write_main(s3_server.blobs_yaml(s3_bucket, secrets_folder).replace(s3_server.endpoint_url, dead))
    monkeypatch.chdir(tmp_path)
    with Hub.from_config(project.config) as hub:
        assert hub.document("snap:a.txt")["status"] == "created"  # Redis is there: only the store is not
        with pytest.raises(StoreUnreachable) as caught:
            hub.open("snap:a.txt")
    assert isinstance(caught.value, ConnectionError) and not isinstance(caught.value, ContentUnavailable)
    assert "snap:a.txt" in str(caught.value) and s3_bucket in str(caught.value)


@contextlib.contextmanager
def _cutting_proxy(upstream_port: int, cut_after: int) -> Iterator[int]:
    """A loopback TCP proxy to `upstream_port` (yields its own port) that drops each connection once
    `cut_after` bytes of the answer have passed: a server or network failing half-way through."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def relay(client: socket.socket) -> None:
        with client, socket.create_connection(("127.0.0.1", upstream_port)) as upstream:
            upstream.sendall(client.recv(65536))  # the request (one GET, one packet on loopback)
            sent = 0
            while sent < cut_after and (chunk := upstream.recv(65536)):
                client.sendall(chunk)
                sent += len(chunk)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test is over
            while True:
                client, _ = listener.accept()
                threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with listener:
        yield listener.getsockname()[1]


def test_a_connection_lost_half_way_through_an_object_is_store_unreachable(tmp_path, s3_server, s3_bucket):
    """The connection failing while an object streams in (here: cut after 2 MiB of 16) is
    StoreUnreachable too, not a botocore or urllib3 error nobody catches by name."""
    from kmrl_sync.config.models import StoreSettings
    from kmrl_sync.content import open_store
    from tests.support.s3_server import REGION

    access, secret = s3_server.credentials(tmp_path / "creds")
    settings = {"bucket": s3_bucket, "prefix": "p", "region": REGION,
                "access_key_id": SecretStr(access.read_text().strip()),
                "secret_access_key": SecretStr(secret.read_text().strip())}
    data = os.urandom(16 << 20)
    digest = hashlib.sha256(data).hexdigest()
    store = open_store(StoreSettings(endpoint_url=s3_server.endpoint_url, **settings))
    s3_server.client().put_object(Bucket=s3_bucket, Key=store.key(digest), Body=data)
    with _cutting_proxy(s3_server.port, cut_after=2 << 20) as port:
        cut = open_store(StoreSettings(endpoint_url=f"http://127.0.0.1:{port}", **settings))
        with cut.open_stored(digest) as body, pytest.raises(StoreUnreachable, match=s3_bucket):
            while body.read(1 << 20):
                pass
