"""Proves the private-Dovecot harness and the mail corpus behave as documented.

These are fast (a few seconds): one shared server, a fresh user per test,
and private servers only where a test restarts or kills Dovecot.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import sys
from pathlib import Path

import pytest

# Make `tests.support` importable however pytest was launched (plain
# `pytest` does not put the repo root on sys.path without a conftest/ini).
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import imapclient  # noqa: E402
from imapclient.exceptions import LoginError  # noqa: E402

from tests.support import dovecot_fixtures  # noqa: E402
from tests.support.dovecot import Dovecot, DovecotMailbox  # noqa: E402
from tests.support.mailcorpus import (  # noqa: E402
    dovecot_roundtrip,
    malformed_mails,
    realistic_mail,
    realistic_mailbox,
)

pytest_plugins = ["tests.support.dovecot_fixtures"]

def _close(c: imapclient.IMAPClient) -> None:
    """Close a client whose server side is gone (avoids ResourceWarnings)."""
    with contextlib.suppress(Exception):
        c.shutdown()


SIMPLE = b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <hi@x>\r\n\r\nHello.\r\n"


# --------------------------------------------------------------------------- server basics
def test_server_greets_and_advertises_what_the_engine_needs(dovecot: Dovecot) -> None:
    assert dovecot.running and dovecot.host == "127.0.0.1" and dovecot.port > 0
    assert dovecot.tls_port is None
    with dovecot.client() as c:
        caps = set(c.capabilities())
    assert {b"UIDPLUS", b"MOVE", b"CONDSTORE", b"IDLE"} <= caps
    # The config is private: nothing from /etc/dovecot.
    conf = dovecot.conf_path.read_text()
    assert "/etc/dovecot" not in conf and str(dovecot.base_dir) in conf


def test_append_and_fetch(dovecot_mailbox: DovecotMailbox) -> None:
    uid = dovecot_mailbox.append("INBOX", SIMPLE, flags=[imapclient.SEEN, "$Label1"])
    assert dovecot_mailbox.uids("INBOX") == [uid]
    assert dovecot_mailbox.fetch_raw("INBOX", uid) == SIMPLE
    assert set(dovecot_mailbox.flags("INBOX", uid)) >= {b"\\Seen", b"$Label1"}


def test_mailboxes_are_isolated(dovecot: Dovecot, dovecot_mailbox: DovecotMailbox) -> None:
    dovecot_mailbox.append("INBOX", SIMPLE)
    dovecot_mailbox.create_folder("Private")
    assert "Private" not in dovecot.list_folders()  # default user sees nothing
    assert "Private" in dovecot_mailbox.list_folders()
    dovecot_mailbox.create_folder("Private.Nested")  # Maildir++: separator is "."
    dovecot.wipe_mailbox(dovecot_mailbox.user)
    assert dovecot_mailbox.list_folders() == ["INBOX"]
    assert dovecot_mailbox.uids("INBOX") == []


def test_uidvalidity_changes_when_folder_recreated(dovecot_mailbox: DovecotMailbox) -> None:
    box = dovecot_mailbox
    box.create_folder("Projects")
    uids = [box.append("Projects", realistic_mail(i, seed=7), flags=["\\Flagged"] if i else [])
            for i in range(3)]
    before = box.uidvalidity("Projects")
    bodies = [box.fetch_raw("Projects", u) for u in uids]

    after = box.recreate_folder_with_same_mails("Projects")

    assert after != before
    assert box.uidvalidity("Projects") == after
    new_uids = box.uids("Projects")
    assert [box.fetch_raw("Projects", u) for u in new_uids] == bodies
    assert b"\\Flagged" in box.flags("Projects", new_uids[1])
    # a second recreate within the same second still yields a new value
    assert box.recreate_folder_with_same_mails("Projects") not in (before, after)


def test_uidvalidity_changes_for_inbox_and_uids_restart(dovecot_mailbox: DovecotMailbox) -> None:
    box = dovecot_mailbox
    for i in range(3):
        box.append("INBOX", realistic_mail(i))
    box.expunge("INBOX", 1)
    before_uids, before = box.uids("INBOX"), box.uidvalidity("INBOX")
    assert before_uids == [2, 3]
    bodies = [box.fetch_raw("INBOX", u) for u in before_uids]

    assert box.recreate_folder_with_same_mails("INBOX") != before
    # Index lost -> Dovecot renumbers the surviving files from 1.
    assert box.uids("INBOX") == [1, 2]
    assert sorted(box.fetch_raw("INBOX", u) for u in (1, 2)) == sorted(bodies)


def test_move_and_expunge(dovecot_mailbox: DovecotMailbox) -> None:
    box = dovecot_mailbox
    box.create_folder("Archive")
    u1 = box.append("INBOX", realistic_mail(1))
    u2 = box.append("INBOX", realistic_mail(2))
    raw1 = box.fetch_raw("INBOX", u1)

    new = box.move("INBOX", u1, "Archive")

    assert box.uids("INBOX") == [u2]
    assert box.uids("Archive") == [new]
    assert box.fetch_raw("Archive", new) == raw1
    box.expunge("INBOX", u2)
    assert box.uids("INBOX") == []
    box.delete_folder("Archive")
    assert "Archive" not in box.list_folders()


# --------------------------------------------------------------------------- faults
def test_restart_drops_connections_but_keeps_state(fresh_dovecot: Dovecot) -> None:
    d = fresh_dovecot
    uid = d.append("INBOX", SIMPLE)
    port, validity = d.port, d.uidvalidity("INBOX")
    c = d.client()
    c.select_folder("INBOX")

    d.restart()

    with pytest.raises((imapclient.IMAPClient.AbortError, OSError)):
        c.noop()
    _close(c)
    assert d.port == port
    assert d.uidvalidity("INBOX") == validity
    assert d.fetch_raw("INBOX", uid) == SIMPLE


def test_kill_connections_drops_live_session(dovecot: Dovecot, dovecot_mailbox: DovecotMailbox) -> None:
    c = dovecot_mailbox.client()
    c.select_folder("INBOX")
    bystander = dovecot.client()  # another user: must survive a per-user kick
    try:
        dovecot_mailbox.kill_connections()
        with pytest.raises((imapclient.IMAPClient.AbortError, OSError)):
            c.noop()
        _close(c)
        bystander.noop()
        with dovecot_mailbox.client() as again:  # server itself is fine
            again.noop()
    finally:
        bystander.logout()


def test_auth_failure_raises(dovecot_mailbox: DovecotMailbox) -> None:
    with pytest.raises(LoginError):
        dovecot_mailbox.client(password="definitely-wrong")
    old = dovecot_mailbox.password
    dovecot_mailbox.set_password("rotated")
    with pytest.raises(LoginError):
        dovecot_mailbox.client(password=old)
    with dovecot_mailbox.client() as c:
        c.noop()


def test_stop_leaves_no_processes(tmp_path: Path) -> None:
    dovecot_fixtures.require_dovecot()
    d = Dovecot(tmp_path / "dc")
    with d:
        pgid = d.pid
        assert pgid is not None
        c = d.client()
        c.select_folder("INBOX")  # leave a logged-in imap process behind
    _close(c)
    assert not d.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_mail_owner_is_never_root(dovecot_mailbox: DovecotMailbox) -> None:
    """Dovecot refuses uid 0 for mail, so as root the harness must drop to another uid."""
    dovecot_mailbox.append("INBOX", SIMPLE)
    owners = {p.stat().st_uid for p in dovecot_mailbox.maildir().rglob("*")}
    if os.geteuid() == 0:
        assert 0 not in owners
    else:
        assert owners == {os.geteuid()}


def test_works_below_a_private_directory(fresh_dovecot: Dovecot, tmp_path: Path) -> None:
    """As root, unprivileged Dovecot processes must not need to traverse base_dir's parents.

    pytest creates tmp_path (and /tmp/pytest-of-root) with mode 0700 and
    re-chmods the latter at every session start -- a concurrent pytest run
    used to break a running server with "Temporary authentication failure".
    """
    tmp_path.chmod(0o700)
    d = fresh_dovecot
    d.add_user("late@example.org", "pw")  # auth must read users.d
    uid = d.append("INBOX", SIMPLE, user="late@example.org")  # imap must reach the Maildir
    assert d.fetch_raw("INBOX", uid, user="late@example.org") == SIMPLE


def test_tls_listener(dovecot_tls: Dovecot) -> None:
    assert dovecot_tls.tls_port and dovecot_tls.cert_path
    with dovecot_tls.client(tls=True) as c:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0


def test_missing_dovecot_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dovecot_fixtures, "dovecot_binary", lambda: None)
    monkeypatch.delenv("KMRL_REQUIRE_DOVECOT", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install dovecot-imapd"):
        dovecot_fixtures.require_dovecot()
    monkeypatch.setenv("KMRL_REQUIRE_DOVECOT", "1")
    with pytest.raises(pytest.fail.Exception, match="KMRL_REQUIRE_DOVECOT"):
        dovecot_fixtures.require_dovecot()


# --------------------------------------------------------------------------- corpus
MALFORMED = malformed_mails()


def test_malformed_corpus_covers_the_brief() -> None:
    names = [n for n, _ in MALFORMED]
    assert len(names) == len(set(names))
    required = {
        "unknown_charset", "broken_encoded_words", "comma_display_names",
        "raw_8bit_latin1_headers", "raw_8bit_utf8_headers", "missing_date",
        "missing_message_id", "duplicate_message_id_1", "duplicate_message_id_2",
        "nested_rfc822", "zero_length_body", "multipart_missing_boundary",
        "multipart_missing_terminator", "attachment_path_traversal", "rfc2231_filenames",
        "long_header_line", "bare_lf", "html_only", "invalid_base64_attachment",
        "garbage_date",
    }
    assert required <= set(names)
    raw = dict(MALFORMED)
    assert b"charset=x-unknown-foo" in raw["unknown_charset"]
    assert b'"Doe, John" <' in raw["comma_display_names"]
    assert b"\r" not in raw["bare_lf"]
    assert raw["zero_length_body"].endswith(b"\r\n\r\n")
    assert max(len(line) for line in raw["long_header_line"].split(b"\r\n")) > 100_000
    assert b"../../etc/passwd" in raw["attachment_path_traversal"]
    assert b"C:\\evil\\x.exe" in raw["attachment_path_traversal"]
    d1, d2 = raw["duplicate_message_id_1"], raw["duplicate_message_id_2"]
    assert d1 != d2 and b"<dup@malformed.example>" in d1 and b"<dup@malformed.example>" in d2


@pytest.mark.parametrize("raw", [r for _, r in MALFORMED], ids=[n for n, _ in MALFORMED])
def test_malformed_mail_roundtrips(dovecot_mailbox: DovecotMailbox, raw: bytes) -> None:
    """Every mail is accepted; clean-CRLF ones come back byte-identical.

    Bare LF / bare CR are stored as LF and served as CRLF, NUL is served as
    0x80 -- modelled by ``dovecot_roundtrip`` (see its docstring).
    """
    uid = dovecot_mailbox.append("INBOX", raw)
    with dovecot_mailbox.client() as c:
        c.select_folder("INBOX", readonly=True)
        data = c.fetch([uid], ["BODY.PEEK[]", "RFC822.SIZE"])[uid]
    got = bytes(data[b"BODY[]"])
    assert got == dovecot_roundtrip(raw)
    assert data[b"RFC822.SIZE"] == len(got)
    without_crlf = raw.replace(b"\r\n", b"")
    if b"\x00" not in raw and b"\r" not in without_crlf and b"\n" not in without_crlf:
        assert got == raw  # clean CRLF mail: byte-identical


def test_realistic_corpus_is_deterministic_and_varied() -> None:
    assert realistic_mail(5, seed=3) == realistic_mail(5, seed=3)
    assert realistic_mail(5, seed=3) != realistic_mail(5, seed=4)
    box = list(realistic_mailbox(200, attachment_ratio=0.2, seed=1))
    assert box[17] == realistic_mail(17, attachments=b"multipart/mixed" in box[17], seed=1)
    kinds, att_sizes, encoded_subjects, replies = set(), [], 0, 0
    for raw in box:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert not msg.defects, msg.defects
        assert msg["Message-ID"] and msg["Date"] and msg["From"]
        kinds.add(msg.get_content_type())
        encoded_subjects += b"Subject: =?UTF-8?B?" in raw
        replies += bool(msg["In-Reply-To"])
        for part in msg.iter_attachments():
            att_sizes.append(len(part.get_content()))
    assert {"text/plain", "multipart/alternative", "multipart/mixed"} <= kinds
    assert 20 <= len([r for r in box if b"multipart/mixed" in r]) <= 60
    assert att_sizes and min(att_sizes) >= 10 << 10 and max(att_sizes) <= (200 << 10) + 200
    assert encoded_subjects > 10 and replies > 100


def test_realistic_mails_roundtrip(dovecot_mailbox: DovecotMailbox) -> None:
    mails = list(realistic_mailbox(15, attachment_ratio=0.3, seed=2))
    with dovecot_mailbox.client() as c:
        for raw in mails:
            c.append("INBOX", raw)
        c.select_folder("INBOX", readonly=True)
        fetched = c.fetch(c.search("ALL"), ["BODY.PEEK[]"])
    assert [bytes(fetched[u][b"BODY[]"]) for u in sorted(fetched)] == mails
