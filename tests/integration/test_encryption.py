"""Encryption at rest through the real CLI: key files, encrypted doc-hash fields in Redis and in the
queue, and the key itself never leaving the process (logs, output, Redis, the store).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from kmrl_sync.content.crypto import load_ciphers
from kmrl_sync.content.errors import ContentCorrupt, KeyMissing
from kmrl_sync.content.keyring import load_keyring
from kmrl_sync.engine.docview import read_document
from kmrl_sync.engine.keys import doc_key
from tests.adversarial.test_secret_leaks import dump_redis, find_leaks
from tests.conftest import Project
from tests.integration.imap_helpers import bulk_append, write_connector
from tests.support.dovecot import DovecotMailbox

FIELDS = ["subject", "from", "to", "cc", "body", "filename"]
SUBJECT = "Falcon budget {i}: confidential"
SENDER = "alice.wong@example.org"
RECIPIENT = "bob.marley@example.org"


def kmrl(*args: str, cwd: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmrl_sync", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, preexec_fn=lambda: os.umask(umask))


def key_texts(key_file: Path) -> list[str]:
    """Every key of the file in the forms it could leak as (the leak test adds their encodings)."""
    texts = []
    for key in load_keyring(key_file).keys.values():
        import base64

        texts += [base64.b64encode(key.secret).decode(), base64.urlsafe_b64encode(key.secret).decode(),
                  key.secret.hex()]
    return texts


# --------------------------------------------------------------------------- the CLI


def test_keys_new_and_rotate(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    created = kmrl("keys", "new", str(key_file), cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # under umask 022
    first = load_keyring(key_file).primary_id
    assert first in created.stdout and str(key_file) in created.stdout

    again = kmrl("keys", "new", str(key_file), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert load_keyring(key_file).primary_id == first  # untouched

    rotated = kmrl("keys", "rotate", str(key_file), cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    ring = load_keyring(key_file)
    assert ring.primary_id != first and set(ring.keys) == {first, ring.primary_id}
    assert ring.primary_id in rotated.stdout and first in rotated.stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]  # no temporary file left

    texts = key_texts(key_file)
    for result in (created, again, rotated):
        assert not find_leaks("keys output", result.stdout + result.stderr, texts)

    os.chmod(key_file, 0o644)
    refused = kmrl("keys", "rotate", str(key_file), cwd=tmp_path)
    assert refused.returncode == 2 and str(key_file) in refused.stderr and "0644" in refused.stderr
    assert load_keyring_unchecked_ids(key_file) == set(ring.keys)


def load_keyring_unchecked_ids(key_file: Path) -> set[str]:
    return {k["id"] for k in json.loads(key_file.read_text())["keys"]}


def test_check_refuses_a_key_file_others_can_read(project: Project, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    project.write_main(f"encryption: {{key_file: {key_file}, encrypt_fields: [subject]}}\n")
    assert project.cli("check").returncode == 0
    os.chmod(key_file, 0o640)
    result = project.cli("check")
    assert result.returncode == 2
    assert f"encryption.key_file: key file {key_file}" in result.stderr and "0640" in result.stderr
    project.write_main(f"encryption: {{key_file: {key_file}, encrypt_fields: [sha256]}}\n")
    os.chmod(key_file, 0o600)
    result = project.cli("check")
    assert result.returncode == 2 and "encryption.encrypt_fields" in result.stderr


# --------------------------------------------------------------------------- fields, end to end


def mail(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Alice Wong <{SENDER}>"
    msg["To"] = RECIPIENT
    msg["Cc"] = "carol.danvers@example.org"
    msg["Subject"] = SUBJECT.format(i=i)
    msg["Message-ID"] = f"<m{i}@mail.test>"
    msg["Date"] = "Mon, 07 Dec 2026 10:00:00 +0000"
    msg.set_content(f"The falcon figures for {i} are attached.\n")
    if i % 2 == 0:
        msg.add_attachment(b"%PDF-1.4 falcon", maintype="application", subtype="pdf", filename=f"report-{i}.pdf")
    return msg.as_bytes().replace(b"\n", b"\r\n")


@pytest.mark.parametrize("queue_format", ["stream", "list"])
def test_listed_fields_are_encrypted_in_redis_and_in_the_queue(
    project: Project, dovecot_mailbox: DovecotMailbox, redis_client: redis.Redis, tmp_path: Path,
    queue_format: str,
) -> None:
    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    project.write_main(f"encryption: {{key_file: {key_file}, encrypt_fields: {json.dumps(FIELDS)}}}\n",
                       queue=f"{{format: {queue_format}, name: document_processing}}")
    project.config.write_text(project.config.read_text().replace("level: warning", "level: debug"))
    bulk_append(dovecot_mailbox, "INBOX", [mail(i) for i in range(6)])
    write_connector(project, "mail", dovecot_mailbox, folders="[INBOX]")
    result = project.cli("sync", "mail", check=True)

    everything = dump_redis(redis_client, skip=set())
    for clear in ("Falcon", "falcon", SENDER, RECIPIENT, "carol.danvers"):
        assert clear not in everything, clear
    assert not find_leaks("redis", everything, key_texts(key_file))
    assert not find_leaks("output", result.stdout + result.stderr, key_texts(key_file))

    fields = load_ciphers(key_file, FIELDS).fields
    doc = fields.decrypt_fields("mail:m3@mail.test", read_document(redis_client, "kmrl", "mail:m3@mail.test"))
    assert doc["subject"] == SUBJECT.format(i=3)
    assert SENDER in doc["from"] and RECIPIENT in doc["to"] and "carol.danvers" in doc["cc"]
    assert "falcon figures for 3" in doc["body"] and "Falcon" in doc["filename"]
    assert doc["message_id"] == "m3@mail.test" and doc["sha256"] and doc["blob"]  # the rest stays as it was
    attachments = [k.decode() for k in redis_client.scan_iter(doc_key("kmrl", "mail:m2@mail.test/att/") + "*")]
    assert len(attachments) == 1
    att_id = "mail:" + attachments[0].removeprefix(doc_key("kmrl", "mail:"))
    att = fields.decrypt_fields(att_id, read_document(redis_client, "kmrl", att_id))
    assert att["filename"] == "report-2.pdf" and att["subject"] == SUBJECT.format(i=2)
    # a value moved to another document does not decrypt
    with pytest.raises(ContentCorrupt):
        fields.decrypt_fields("mail:m3@mail.test", {"subject": redis_client.hget(attachments[0], "subject")})

    blobs = stored_files(project)  # mails and attachments, written by the IMAP worker processes
    assert len(blobs) == 7 and all(p.read_bytes().startswith(b"KMRLENC") for p in blobs)  # 3 attachments alike
    assert not any(b"falcon" in p.read_bytes() for p in blobs)
    with store_of(project) as store, store.open_plain(doc["blob"]) as f:
        assert b"falcon figures for 3" in f.read()

    if queue_format == "stream":
        entries = redis_client.xrange("document_processing:{mail}")
        metadata = [json.loads(e[1][b"metadata"]) for e in entries]
    else:
        metadata = [json.loads(raw)["metadata"] for raw in redis_client.lrange("document_processing", 0, -1)]
    assert len(metadata) == 9  # six mails, three attachments
    assert all(m["subject"].startswith("enc:1:") for m in metadata)


# --------------------------------------------------------------------------- content, end to end


def snapshot_project(project: Project, tmp_path: Path, key_file: Path | None, files: dict[str, bytes]) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir(exist_ok=True)
    for name, data in files.items():
        (tree / name).write_bytes(data)
    project.write_main(f"encryption: {{key_file: {key_file}}}\n" if key_file else "")
    project.config.write_text(project.config.read_text().replace("level: warning", "level: debug"))
    project.filesystem("fs", tree, "snapshot: true\n")
    return tree


def store_of(project: Project):
    from kmrl_sync.content import open_store
    from kmrl_sync.loading.loader import load_config

    config = load_config(project.config)
    cipher = load_ciphers(config.encryption.key_file).content if config.encryption else None
    return open_store(config.blobs, cipher)


def stored_files(project: Project) -> list[Path]:
    return [p for p in (project.root / "state" / "blobs").rglob("*") if p.is_file()]


def test_snapshot_sync_stores_content_encrypted(project: Project, redis_client: redis.Redis, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    files = {f"doc{i}.txt": (f"Confidential falcon report {i}\n" * (i * 3000 + 1)).encode() for i in range(8)}
    files["empty.txt"] = b""
    tree = snapshot_project(project, tmp_path, key_file, files)
    result = project.cli("sync", "fs", check=True)

    blobs = stored_files(project)
    assert len(blobs) == len(files)
    for path in blobs:
        stored = path.read_bytes()
        assert stored.startswith(b"KMRLENC") and b"falcon" not in stored
    texts = key_texts(key_file)
    assert not find_leaks("store", b"".join(p.read_bytes() for p in blobs).decode("latin-1"), texts)
    assert not find_leaks("redis", dump_redis(redis_client, skip=set()), texts)
    assert not find_leaks("output", result.stdout + result.stderr, texts)

    with store_of(project) as store:
        for name, data in files.items():
            meta = read_document(redis_client, "kmrl", f"fs:{name}")
            assert meta["sha256"] == hashlib.sha256(data).hexdigest() and int(meta["size"]) == len(data)
            with store.open_plain(meta["blob"]) as f:
                assert f.read() == (tree / name).read_bytes()


def test_tampered_stored_content_is_refused_on_read(project: Project, redis_client: redis.Redis,
                                                    tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    files = {"a.txt": b"A" * 200_000, "b.txt": b"B" * 200_000, "c.txt": b"C" * 150_000}
    snapshot_project(project, tmp_path, key_file, files)
    project.cli("sync", "fs", check=True)
    with store_of(project) as store:
        path = {name: store.path(hashlib.sha256(data).hexdigest()) for name, data in files.items()}
        digest = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}

        def read(name: str) -> bytes:
            with store.open_plain(digest[name]) as f:
                return f.read()

        original = {name: p.read_bytes() for name, p in path.items()}
        flipped = bytearray(original["a.txt"])
        flipped[100_000] ^= 0x40
        path["a.txt"].write_bytes(flipped)
        with pytest.raises(ContentCorrupt, match="authentication"):
            read("a.txt")
        path["a.txt"].write_bytes(original["a.txt"][:-1000])  # truncated
        with pytest.raises(ContentCorrupt):
            read("a.txt")
        path["a.txt"].write_bytes(original["a.txt"][:36 + 2 * (64 * 1024 + 17)])  # cut at a chunk boundary
        with pytest.raises(ContentCorrupt, match="truncated"):
            read("a.txt")
        path["a.txt"].write_bytes(original["b.txt"])  # two objects swapped
        path["b.txt"].write_bytes(original["a.txt"])
        with pytest.raises(ContentCorrupt, match="sha256"):
            read("a.txt")
        with pytest.raises(ContentCorrupt, match="sha256"):
            read("b.txt")
        assert read("c.txt") == files["c.txt"]  # untouched content still reads

    # the key file lost (or replaced by another): the content is unavailable, not misread
    key_file.unlink()
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    with store_of(project) as store, pytest.raises(KeyMissing):
        store.open_plain(digest["c.txt"]).read()


def test_encryption_turned_on_later(project: Project, redis_client: redis.Redis, tmp_path: Path) -> None:
    """Content stored in clear stays readable (checked by its sha256); a changed file is stored
    encrypted; content already stored in clear is rewritten encrypted when it is stored again."""
    files = {"old.txt": b"written before encryption " * 1000, "changes.txt": b"first version " * 1000}
    tree = snapshot_project(project, tmp_path, None, files)
    project.cli("sync", "fs", check=True)
    old_digest = hashlib.sha256(files["old.txt"]).hexdigest()

    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    project.write_main(f"encryption: {{key_file: {key_file}}}\n")
    (tree / "changes.txt").write_bytes(b"second version " * 1000)
    project.cli("sync", "fs", check=True)
    with store_of(project) as store:
        assert store.path(old_digest).read_bytes() == files["old.txt"]  # not rewritten: unchanged file
        with store.open_plain(old_digest) as f:
            assert f.read() == files["old.txt"]
        new_digest = hashlib.sha256(b"second version " * 1000).hexdigest()
        assert store.path(new_digest).read_bytes().startswith(b"KMRLENC")
        store.path(old_digest).write_bytes(b"X" + files["old.txt"][1:])  # clear content tampered with
        with pytest.raises(ContentCorrupt, match="sha256"):
            store.open_plain(old_digest).read()

    project.cli("sync", "fs", "--full", check=True)  # a full run stores every file again
    with store_of(project) as store:
        assert store.path(old_digest).read_bytes().startswith(b"KMRLENC")
        with store.open_plain(old_digest) as f:
            assert f.read() == files["old.txt"]


def test_snapshot_sync_into_s3_encrypted(project: Project, redis_client: redis.Redis, tmp_path: Path,
                                         s3_server) -> None:
    """The same into a bucket: small objects in one PUT, a 9 MB one in parts; all stored encrypted."""
    key_file = tmp_path / "keys.json"
    assert kmrl("keys", "new", str(key_file), cwd=tmp_path).returncode == 0
    files = {"small.txt": b"falcon small " * 1000, "big.bin": os.urandom(9 << 20), "empty.txt": b""}
    tree = snapshot_project(project, tmp_path, None, files)
    bucket = s3_server.new_bucket()
    project.write_main(s3_server.blobs_yaml(bucket, tmp_path / "s3") + f"encryption: {{key_file: {key_file}}}\n")
    result = project.cli("sync", "fs", check=True)

    objects = s3_server.keys(bucket)
    assert len(objects) == len(files)
    assert all(data.startswith(b"KMRLENC") and b"falcon" not in data for data in objects.values())
    assert not find_leaks("bucket", b"".join(objects.values()).decode("latin-1"), key_texts(key_file))
    assert not find_leaks("output", result.stdout + result.stderr, key_texts(key_file))
    with store_of(project) as store:
        for name in files:
            meta = read_document(redis_client, "kmrl", f"fs:{name}")
            assert meta["blob"].startswith("s3://")
            with store.open_plain(meta["blob"]) as f:
                assert f.read() == (tree / name).read_bytes()
