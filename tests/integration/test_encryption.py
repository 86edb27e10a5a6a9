"""Encryption at rest through the real CLI: key files, encrypted doc-hash fields in Redis and in the
queue, and the key itself never leaving the process (logs, output, Redis, the store).
"""

from __future__ import annotations

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
from kmrl_sync.content.keyring import load_keyring
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
    assert fields is not None
    doc = fields.decrypt_fields("mail:m3@mail.test", redis_client.hgetall(doc_key("kmrl", "mail:m3@mail.test")))
    assert doc["subject"] == SUBJECT.format(i=3)
    assert SENDER in doc["from"] and RECIPIENT in doc["to"] and "carol.danvers" in doc["cc"]
    assert "falcon figures for 3" in doc["body"] and "Falcon" in doc["filename"]
    assert doc["message_id"] == "m3@mail.test" and doc["sha256"] and doc["blob"]  # the rest stays as it was
    attachments = [k.decode() for k in redis_client.scan_iter(doc_key("kmrl", "mail:m2@mail.test/att/") + "*")]
    assert len(attachments) == 1
    att_id = "mail:" + attachments[0].removeprefix(doc_key("kmrl", "mail:"))
    att = fields.decrypt_fields(att_id, redis_client.hgetall(attachments[0]))
    assert att["filename"] == "report-2.pdf" and att["subject"] == SUBJECT.format(i=2)
    # a value moved to another document does not decrypt
    from kmrl_sync.content.errors import ContentCorrupt

    with pytest.raises(ContentCorrupt):
        fields.decrypt_fields("mail:m3@mail.test", {"subject": redis_client.hget(attachments[0], "subject")})

    if queue_format == "stream":
        entries = redis_client.xrange("document_processing:{mail}")
        metadata = [json.loads(e[1][b"metadata"]) for e in entries]
    else:
        metadata = [json.loads(raw)["metadata"] for raw in redis_client.lrange("document_processing", 0, -1)]
    assert len(metadata) == 9  # six mails, three attachments
    assert all(m["subject"].startswith("enc:1:") for m in metadata)
