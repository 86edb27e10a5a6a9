"""IMAP login at the edges: dropped connections, refusals, server text, passwords beyond ASCII.

- A connection dropped during LOGIN (silently, or with BYE) is a network failure: retried with
  backoff like any other drop. A NO is a refusal: never asked again (a wrong password asked twice
  locks accounts).
- What a server says reaches the operator as text, never as a Python bytes repr (`b'...'`).
- A password (or user name) that is not ASCII logs in with AUTHENTICATE PLAIN (UTF-8, RFC 4616);
  a server that cannot take it gets a clear error naming the field, not a UnicodeEncodeError.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from kmrl_sync.connectors.imap.client import ImapSession, LoginRefused, server_text
from kmrl_sync.connectors.imap.options import ImapOptions
from kmrl_sync.engine.connector import ConnectorError
from tests.adversarial.hostile_imap import Behaviour, hostile_imap
from tests.integration.imap_helpers import mail_ids, write_connector

USER = "docs@kmrl.example"
UTF8_PASSWORD = "Pässwörd-ключ-密码"


def options(port: int, password_file: Path, **extra) -> ImapOptions:
    return ImapOptions(host="127.0.0.1", port=port, tls=False, username=USER, password_file=password_file,
                       timeout=10, **extra)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "imap-password"
    path.write_text("plain-ascii-pw\n")
    return path


def hostile_connector(project, name: str, port: int, password_file: Path) -> None:
    project.connector(name, f"""\
        type: imap
        options:
          host: 127.0.0.1
          port: {port}
          tls: false
          username: "{USER}"
          password_file: {password_file}
          timeout: 10s
        """)


# --------------------------------------------------------------------------- drops are retried


@pytest.mark.parametrize("drop", [b"", b"* BYE server shutting down"], ids=["silent close", "BYE"])
def test_a_login_dropped_is_retried_and_a_refusal_then_is_final(password_file: Path, drop: bytes) -> None:
    with hostile_imap(Behaviour(mode="drop", drops=2, then="no", drop_with=drop)) as (port, behaviour), \
            pytest.raises(LoginRefused, match="was refused"):
        ImapSession(options(port, password_file), attempts=6).connect()
    assert len(behaviour.logins) == 3  # two drops retried, then the NO, not asked again
    assert behaviour.connections == 3


def test_a_login_that_keeps_dropping_is_reported_as_a_connection_failure(password_file: Path) -> None:
    with hostile_imap(Behaviour(mode="drop", drops=100)) as (port, behaviour), \
            pytest.raises(ConnectorError) as caught:
        ImapSession(options(port, password_file), attempts=3).connect()
    assert not isinstance(caught.value, LoginRefused)
    assert "unreachable after 3 attempts" in str(caught.value) and "refused" not in str(caught.value)
    assert len(behaviour.logins) == 3


def test_a_refused_login_is_asked_once(password_file: Path) -> None:
    with hostile_imap(Behaviour(mode="no")) as (port, behaviour), pytest.raises(LoginRefused):
        ImapSession(options(port, password_file), attempts=6).connect()
    assert len(behaviour.logins) == 1


def test_a_one_shot_sync_asks_a_refusing_server_once(project, password_file: Path) -> None:
    with hostile_imap(Behaviour(mode="no")) as (port, behaviour):
        hostile_connector(project, "mail", port, password_file)
        result = project.cli("sync", "mail")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused" in result.stdout
    assert len(behaviour.logins) == 1


def test_a_one_shot_sync_retries_a_dropped_login(project, password_file: Path) -> None:
    with hostile_imap(Behaviour(mode="drop", drops=2, then="no")) as (port, behaviour):
        hostile_connector(project, "mail", port, password_file)
        result = project.cli("sync", "mail")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "was refused: [AUTHENTICATIONFAILED] Authentication failed." in result.stdout
    assert "imap connection problem, reconnecting" in result.stderr
    assert len(behaviour.logins) == 3  # dropped, dropped, refused


# --------------------------------------------------------------------------- server text is text


def test_server_text_is_shown_as_text_everywhere(project, password_file: Path) -> None:
    odd = " caf\xc3\xa9 \xff\xfe end".encode("latin-1")  # UTF-8 and bytes that are not
    with hostile_imap(Behaviour(mode="no", leak=odd)) as (port, _behaviour):
        hostile_connector(project, "mail", port, password_file)
        result = project.cli("sync", "mail")
    status = json.loads(project.cli("status", "--json", check=True).stdout)
    last_error = status["connectors"][0]["last_error"]
    for text in (result.stdout, result.stderr, last_error):  # no b'[AUTH...', no \xc3\xa9
        assert "b'[" not in text and 'b"[' not in text and "\\xc3" not in text and "\\xff" not in text, text
    assert "[AUTHENTICATIONFAILED] Authentication failed. café \ufffd\ufffd end" in last_error


def test_a_refusal_from_dovecot_is_text(project, dovecot_mailbox, redis_client) -> None:
    write_connector(project, "mail", dovecot_mailbox, folders="[INBOX]", password="wrong-password")
    result = project.cli("sync", "mail")
    assert result.returncode == 1
    assert "was refused: [AUTHENTICATIONFAILED] Authentication failed. (check" in result.stdout


REPLIES = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(max_examples=300, deadline=None)
@given(reply=REPLIES)
def test_every_shape_of_imaplib_error_reads_as_text(reply: bytes) -> None:
    """imaplib raises with bytes; imapclient re-raises with str() of that; both read as text."""
    decoded = reply.decode("utf-8", "replace")
    try:
        raise IMAPClientError(reply)
    except IMAPClientError as error:
        assert server_text(error) == (decoded or type(error).__name__)
        try:
            raise LoginError(str(error))
        except LoginError as wrapped:
            assert server_text(wrapped) == (decoded or "LoginError")
    text = server_text(IMAPClientError(f"fetch failed: {reply!r}"))
    assert text == f"fetch failed: {decoded}"
    assert server_text(IMAPClientAbortError("command: LOGIN => socket error: EOF")) == \
        "command: LOGIN => socket error: EOF"


# --------------------------------------------------------------------------- passwords beyond ASCII


def test_a_non_ascii_password_logs_in_to_dovecot(project, dovecot_mailbox, redis_client) -> None:
    box = dovecot_mailbox
    box.append("INBOX", b"From: a@example.org\r\nSubject: hi\r\nMessage-ID: <utf8-pw@example.org>\r\n\r\nbody\r\n")
    box.server.set_password(box.user, UTF8_PASSWORD)
    write_connector(project, "mail", box, folders="[INBOX]", password=UTF8_PASSWORD)
    result = project.cli("sync", "mail")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "created 1" in result.stdout
    assert mail_ids(redis_client, "mail") == {"mail:utf8-pw@example.org"}
    check = project.cli("check", "--connect")
    assert "mail (imap): ok" in check.stdout, check.stdout + check.stderr


def test_a_non_ascii_password_uses_authenticate_plain(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(UTF8_PASSWORD)
    with hostile_imap(Behaviour(mode="no")) as (port, behaviour), pytest.raises(LoginRefused):
        ImapSession(options(port, secret)).connect()
    assert [line.split(b" ", 3)[1:3] for line in behaviour.logins] == [[b"AUTHENTICATE", b"PLAIN"]]


def test_a_server_without_plain_gets_a_clear_error(project, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(UTF8_PASSWORD)
    with hostile_imap(Behaviour(mode="no", auth_plain=False)) as (port, behaviour):
        hostile_connector(project, "mail", port, secret)
        result = project.cli("sync", "mail")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "crashed" not in out and "Traceback" not in out and "UnicodeEncodeError" not in out
    assert "mail: failed" in result.stdout
    assert "options.password_file has non-ASCII characters" in result.stdout
    assert behaviour.logins == []  # nothing was sent that the server could not read
