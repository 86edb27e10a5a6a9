"""The IMAP connector against a real Dovecot, driven through the real CLI (`kmrl-sync sync`).

What must hold (issue 3): every mail of the synced folders reaches the queue exactly once with its
attachments, whatever happens to the mailbox between runs: new mail, moves, expunges, a renumbered
folder (UIDVALIDITY change), malformed mail.
"""

from __future__ import annotations

import pytest

from tests.integration.imap_helpers import (
    bulk_append,
    counts,
    doc,
    inbox_and_archive,
    mail_ids,
    queued,
    write_connector,
)
from tests.support.blobs import read_blob
from tests.support.dovecot import DovecotMailbox
from tests.support.mailcorpus import malformed_mails, realistic_mail, realistic_mailbox

N_INBOX, N_ARCHIVE = 160, 140


def _msgid(i: int, seed: int = 0) -> str:
    raw = realistic_mail(i, seed=seed)
    line = next(line for line in raw.split(b"\r\n") if line.startswith(b"Message-ID:"))
    return line.split(b"<")[1].split(b">")[0].decode()


@pytest.fixture
def synced(project, dovecot_mailbox: DovecotMailbox, redis_client):
    """Two folders of realistic mail (20% with attachments), synced once."""
    box = dovecot_mailbox
    mails = list(realistic_mailbox(N_INBOX + N_ARCHIVE, attachment_ratio=0.2, seed=3))
    inbox_and_archive(box, mails[:N_INBOX], mails[N_INBOX:])
    write_connector(project, "mail", box)
    result = project.cli("sync", "mail", check=True)
    return box, mails, result


def test_initial_sync_queues_every_mail_and_attachment_once(synced, redis_client) -> None:
    box, mails, result = synced
    items = queued(redis_client)
    c = counts(redis_client)
    assert all(n == 1 for n in c.values()), [k for k, n in c.items() if n > 1]
    assert all(task == "process_document" for task, _ in items)
    mails_sent = {d for _t, d in items if "/att/" not in d}
    assert len(mails_sent) == N_INBOX + N_ARCHIVE
    attachments = [d for _t, d in items if "/att/" in d]
    with_att = [m for m in mails if b"multipart/mixed" in m]
    assert len(attachments) >= len(with_att) > 0
    assert "created" in result.stdout and "failed 0" in result.stdout

    # metadata of a mail and of one of its attachments
    mail = doc(redis_client, f"mail:{_msgid(0, seed=3)}")
    assert mail["folder"] == "INBOX" and mail["mime_type"] == "message/rfc822"
    assert mail["message_id"] == _msgid(0, seed=3)
    for field in ("from", "to", "cc", "subject", "date", "body", "has_attachments", "blob", "sha256"):
        assert field in mail, field
    att_id = attachments[0]
    att = doc(redis_client, att_id)
    parent = att["parent_document_id"]
    assert att_id.startswith(parent + "/att/")
    assert doc(redis_client, parent)["has_attachments"] == "true"
    assert "/" not in att["filename"] and att["size"] != "0"
    import hashlib  # the decoded attachment content, sha256-addressed

    assert hashlib.sha256(read_blob(att["blob"])).hexdigest() == att["sha256"]
    # the raw mail is stored byte for byte, and fetching never set \Seen
    uid = int(mail["uid"])
    assert read_blob(mail["blob"]) == box.fetch_raw("INBOX", uid)
    assert b"\\Seen" not in box.flags("INBOX", uid)


def test_second_run_queues_nothing_then_only_new_mail(synced, project, redis_client) -> None:
    box, _mails, _ = synced
    before = len(queued(redis_client))
    result = project.cli("sync", "mail", check=True)
    assert len(queued(redis_client)) == before
    assert "created 0" in result.stdout
    extra = [realistic_mail(1000 + i, attachments=(i % 3 == 0), seed=3) for i in range(12)]
    bulk_append(box, "INBOX", extra[:7])
    bulk_append(box, "Archive", extra[7:])
    project.cli("sync", "mail", check=True)
    new_items = queued(redis_client)[before:]
    new_mails = {d for _t, d in new_items if "/att/" not in d}
    assert new_mails == {f"mail:{_msgid(1000 + i, seed=3)}" for i in range(12)}
    assert all(t == "process_document" for t, _ in new_items)
    assert all(n == 1 for n in counts(redis_client).values())


def test_move_queues_nothing_and_expunge_queues_one_delete(synced, project, redis_client) -> None:
    box, mails, _ = synced
    before = len(queued(redis_client))
    uids = box.uids("INBOX")
    moved_uid = uids[5]
    moved_id = doc(redis_client, f"mail:{_msgid(5, seed=3)}")["document_id"]
    new_uid = box.move("INBOX", moved_uid, "Archive")
    project.cli("sync", "mail", check=True)
    assert queued(redis_client)[before:] == []
    assert doc(redis_client, moved_id)["status"] == "created"  # still a live document

    # expunge a mail without attachments: exactly one delete_document
    plain = next(i for i in range(N_INBOX) if b"multipart/mixed" not in mails[i] and i != 5)
    box.expunge("INBOX", uids[plain])
    project.cli("sync", "mail", check=True)
    assert queued(redis_client)[before:] == [("delete_document", f"mail:{_msgid(plain, seed=3)}")]

    # the moved mail, expunged from its new folder, is now gone from every folder
    box.expunge("Archive", new_uid)
    project.cli("sync", "mail", check=True)
    assert queued(redis_client)[-1] == ("delete_document", moved_id)


def test_expunging_a_mail_deletes_its_attachments(synced, project, redis_client) -> None:
    box, mails, _ = synced
    i = next(i for i in range(N_INBOX) if b"multipart/mixed" in mails[i])
    mail_id = f"mail:{_msgid(i, seed=3)}"
    atts = {d for _t, d in queued(redis_client) if d.startswith(mail_id + "/att/")}
    assert atts
    before = len(queued(redis_client))
    box.expunge("INBOX", box.uids("INBOX")[i])
    project.cli("sync", "mail", check=True)
    deleted = queued(redis_client)[before:]
    assert all(t == "delete_document" for t, _ in deleted)
    assert {d for _t, d in deleted} == {mail_id, *atts}


def test_uidvalidity_reset_queues_nothing_twice(synced, project, redis_client) -> None:
    box, _mails, _ = synced
    before = len(queued(redis_client))
    old = box.uidvalidity("Archive")
    assert box.recreate_folder_with_same_mails("Archive") != old
    box.recreate_folder_with_same_mails("INBOX")
    result = project.cli("sync", "mail", check=True)
    assert queued(redis_client)[before:] == [], result.stdout
    # the renumbered folders are tracked again: new mail and expunges still work
    bulk_append(box, "Archive", [realistic_mail(2000, seed=3)])
    project.cli("sync", "mail", check=True)
    assert queued(redis_client)[before:] == [("process_document", f"mail:{_msgid(2000, seed=3)}")]
    box.expunge("Archive", box.uids("Archive")[0])
    project.cli("sync", "mail", check=True)
    assert queued(redis_client)[-1][0] == "delete_document"
    assert all(n == 1 for n in counts(redis_client).values())


def test_malformed_corpus_is_all_queued(project, dovecot_mailbox: DovecotMailbox, redis_client) -> None:
    box = dovecot_mailbox
    corpus = malformed_mails()
    bulk_append(box, "INBOX", [raw for _name, raw in corpus])
    write_connector(project, "bad", box, folders="[INBOX]")
    result = project.cli("sync", "bad")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    mails = mail_ids(redis_client, "bad")
    assert len(mails) == len(corpus)  # the duplicated Message-ID got a second, header-hash id
    assert "bad:dup@malformed.example" in mails
    assert sum(1 for m in mails if m.startswith("bad:hdr-")) == 2  # missing id + the duplicate
    assert all(n == 1 for n in counts(redis_client).values())
    subject = doc(redis_client, "bad:raw_8bit_latin1_headers@malformed.example")["subject"]
    assert subject == "Grüße à tous, £100"
    commas = doc(redis_client, "bad:comma_display_names@malformed.example")
    assert commas["from"] == '"Doe, John" <john.doe@example.com>'
    assert len(__import__("json").loads(commas["to"])) == 3
    evil = [d for d in queued(redis_client) if "attachment_path_traversal" in d[1] and "/att/" in d[1]]
    assert evil and all(".." not in d.split("/att/")[1] for _t, d in evil)
    for _t, d in evil:
        assert "/" not in doc(redis_client, d)["filename"]
    # nothing new on a second run, and the duplicates keep their ids
    project.cli("sync", "bad", check=True)
    assert all(n == 1 for n in counts(redis_client).values())


def test_internal_date_is_utc_whatever_the_local_time_zone(project, dovecot_mailbox: DovecotMailbox,
                                                           redis_client) -> None:
    """INTERNALDATE is published in UTC: the sync's own time zone (Kochi is UTC+05:30) must not
    shift it, and a mail without a Date header is dated by it."""
    import datetime as dt

    box = dovecot_mailbox
    received = dt.datetime(2024, 3, 5, 14, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    raw = b"From: a@example.org\r\nSubject: no date\r\nMessage-ID: <undated@example.org>\r\n\r\nbody\r\n"
    box.append("INBOX", raw, msg_time=received)
    write_connector(project, "tz", box, folders="[INBOX]")
    project.cli("sync", "tz", check=True, env={"TZ": "Asia/Kolkata"})
    mail = doc(redis_client, "tz:undated@example.org")
    assert mail["internal_date"] == "2024-03-05T12:30:15Z"
    assert mail["modified_at"] == "2024-03-05T12:30:15Z"


def test_propagate_deletes_off(project, dovecot_mailbox: DovecotMailbox, redis_client) -> None:
    box = dovecot_mailbox
    bulk_append(box, "INBOX", [realistic_mail(i, seed=5) for i in range(5)])
    write_connector(project, "keep", box, folders="[INBOX]", extra="  propagate_deletes: false\n")
    project.cli("sync", "keep", check=True)
    before = len(queued(redis_client))
    box.expunge("INBOX", box.uids("INBOX")[0])
    project.cli("sync", "keep", check=True)
    assert len(queued(redis_client)) == before


def test_all_folders_with_exclude_and_folder_dropped_from_config(project, dovecot_mailbox, redis_client) -> None:
    box = dovecot_mailbox
    for folder in ("Archive", "Trash", "Projects.2024"):
        box.create_folder(folder)
    bulk_append(box, "INBOX", [realistic_mail(1, seed=6)])
    bulk_append(box, "Trash", [realistic_mail(2, seed=6)])
    bulk_append(box, "Projects.2024", [realistic_mail(3, seed=6)])
    write_connector(project, "all", box, folders='["*"]', extra="  exclude: [Trash]\n")
    project.cli("sync", "all", check=True)
    assert mail_ids(redis_client, "all") == {f"all:{_msgid(i, seed=6)}" for i in (1, 3)}
    # the folder leaves the config: its mails are gone from every synced folder
    write_connector(project, "all", box, folders="[INBOX]")
    project.cli("sync", "all", check=True)
    assert queued(redis_client)[-1] == ("delete_document", f"all:{_msgid(3, seed=6)}")


def test_auth_failure_is_clear_and_shows_no_secret(project, dovecot_mailbox, redis_client) -> None:
    box = dovecot_mailbox
    secret = "Wr0ng-S3cret-xyz"
    write_connector(project, "locked", box, folders="[INBOX]", password=secret)
    result = project.cli("sync", "locked")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "login" in out.lower() and "refused" in out.lower() and box.user in out
    assert secret not in out
    assert queued(redis_client) == []


def test_unreachable_server_fails_the_run(project, dovecot_mailbox, redis_client) -> None:
    from tests.support.dovecot import free_port

    box = dovecot_mailbox
    path = write_connector(project, "down", box, folders="[INBOX]")
    path.write_text(path.read_text().replace(f"port: {box.port}", f"port: {free_port()}")
                    + "  timeout: 2s\n")
    result = project.cli("sync", "down")
    assert result.returncode == 1
    assert "unreachable" in (result.stdout + result.stderr)


def test_a_mail_the_server_cannot_read_fails_alone_and_is_fetched_once_readable(
        project, dovecot_mailbox, redis_client) -> None:
    """A mail file Dovecot cannot open: that FETCH answers NO; the chunk is retried mail by mail,
    that one mail is reported as failed, the others are queued, and a later run picks it up."""
    import os

    box = dovecot_mailbox
    bulk_append(box, "INBOX", [realistic_mail(i, seed=8) for i in range(6)])
    maildir = box.server.mail_root / box.user / "Maildir"
    files = sorted(p for sub in ("new", "cur") for p in (maildir / sub).iterdir())
    assert len(files) == 6
    broken = files[2]
    if os.geteuid() == 0 and box.server.accounts.mail_uid == 0:
        pytest.skip("Dovecot reads mail as root here: a file mode cannot make a mail unreadable")
    broken.chmod(0)
    write_connector(project, "unread", box, folders="[INBOX]")
    result = project.cli("sync", "unread")
    out = result.stdout + result.stderr
    assert "failed 1" in out, out
    assert "UID" in out and "cannot fetch mail" in out, out
    assert len(mail_ids(redis_client, "unread")) == 5
    broken.chmod(0o600)
    project.cli("sync", "unread", check=True)
    assert mail_ids(redis_client, "unread") == {f"unread:{_msgid(i, seed=8)}" for i in range(6)}
    assert all(n == 1 for n in counts(redis_client).values())
