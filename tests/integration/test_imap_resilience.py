"""Crashes, dropped connections, TLS and IDLE: the IMAP connector against a real Dovecot."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from kmrl_sync.engine.keys import document_id_of
from tests.integration.imap_helpers import bulk_append, counts, inbox_and_archive, queued, write_connector
from tests.support.blobs import blob_path, read_blob
from tests.support.crash import crash_rng, kill_at_random_commits
from tests.support.documents import document
from tests.support.dovecot import Dovecot, DovecotMailbox
from tests.support.mailcorpus import realistic_mail, realistic_mailbox


def test_kill_9_mid_sync_then_resume_queues_each_mail_once(project, dovecot_mailbox, redis_client) -> None:
    box = dovecot_mailbox
    mails = list(realistic_mailbox(1500, attachment_ratio=0.2, seed=11))
    inbox_and_archive(box, mails[:900], mails[900:])
    write_connector(project, "crash", box, extra="  batch_size: 50\n")
    seed, rng = crash_rng(default=20240611)
    cmd = [sys.executable, "-m", "kmrl_sync", "sync", "crash", "-c", str(project.config)]

    def mails_queued() -> int:
        return sum(1 for _t, d in queued(redis_client) if "/att/" not in d)

    # kill each run once it has committed past a random point: mid-sync however fast the sync is
    kills = kill_at_random_commits(cmd, project.root, mails_queued, seed=seed, rng=rng,
                                   targets=sorted(rng.sample(range(50, 1400), 4)))
    assert kills.count >= 1, seed
    assert any(0 < n < 1500 for n in kills.progress), (seed, kills)  # killed mid-sync, after some commits
    result = project.cli("sync", "crash", check=True)
    c = counts(redis_client)
    assert all(n == 1 for n in c.values()), [k for k, n in c.items() if n > 1][:5]
    mails_sent = {d for t, d in c if "/att/" not in d}
    assert len(mails_sent) == 1500, result.stdout
    assert all(t == "process_document" for t, _ in c)
    # and the state is complete: another run finds nothing to do
    project.cli("sync", "crash", check=True)
    assert sum(counts(redis_client).values()) == sum(c.values())


def _engine(project):
    from kmrl_sync.engine.runner import Engine
    from kmrl_sync.loading.loader import load_config

    return Engine(load_config(project.config))


def test_connection_dropped_between_batches_resumes(project, dovecot_mailbox: DovecotMailbox,
                                                    redis_client) -> None:
    """The server kicks us after the first commit: reconnect, re-select, go on, nothing lost or doubled."""
    box = dovecot_mailbox
    bulk_append(box, "INBOX", [realistic_mail(i, seed=12) for i in range(1100)])
    write_connector(project, "drop", box, folders="[INBOX]", extra="  batch_size: 100\n")
    kicked: list[int] = []

    def progress(name, summary, total):
        if not kicked:
            box.kill_connections()
            kicked.append(summary.created)

    summary = _engine(project).run("drop", progress=progress)
    assert summary.result == "ok", summary.error
    assert kicked and 0 < kicked[0] < 1100
    c = counts(redis_client)
    assert len(c) == 1100 and all(n == 1 for n in c.values())


def test_reads_after_a_yield_wait_for_the_batch_still_committing(project, dovecot_mailbox: DovecotMailbox,
                                                                   redis_client, monkeypatch) -> None:
    """Commits run in the background (pipelined): make each one slow, so that every read the syncer
    does after a yield (orphans, UID maps, dropped incarnations) happens while the batch that wrote
    them is still in flight. Expunges, moves and a renumbered folder must still come out exactly right.
    """
    from kmrl_sync.engine.state import ConnectorState

    execute = ConnectorState.execute

    def slow_execute(self, prepared):
        time.sleep(0.2)
        return execute(self, prepared)

    monkeypatch.setattr(ConnectorState, "execute", slow_execute)
    box = dovecot_mailbox
    inbox_and_archive(box, [realistic_mail(i, seed=21) for i in range(60)],
                      [realistic_mail(i, seed=21) for i in range(60, 90)])
    write_connector(project, "slow", box, extra="  batch_size: 20\n")
    assert _engine(project).run("slow").result == "ok"
    assert len(queued(redis_client)) == 90

    moved = box.uids("INBOX")[3]
    box.move("INBOX", moved, "Archive")
    box.expunge("INBOX", box.uids("INBOX")[0])
    summary = _engine(project).run("slow")
    assert summary.result == "ok", summary.error
    assert [t for t, _d in queued(redis_client)[90:]] == ["delete_document"]

    box.recreate_folder_with_same_mails("Archive")  # renumbered: old UID map purged, nothing re-sent
    summary = _engine(project).run("slow")
    assert summary.result == "ok", summary.error
    assert len(queued(redis_client)) == 91
    box.expunge("Archive", box.uids("Archive")[0])
    assert _engine(project).run("slow").result == "ok"
    assert [t for t, _d in queued(redis_client)[91:]] == ["delete_document"]
    assert all(n == 1 for n in counts(redis_client).values())


def test_session_reconnects_and_repeats_the_command(dovecot_mailbox: DovecotMailbox) -> None:
    from kmrl_sync.connectors.imap.client import ImapSession
    from kmrl_sync.connectors.imap.imapclient_compat import imaplib_debug_level
    from kmrl_sync.connectors.imap.options import ImapOptions

    box = dovecot_mailbox
    uid = box.append("INBOX", realistic_mail(1, seed=13))
    opts = ImapOptions(host="127.0.0.1", port=box.port, tls=False, username=box.user, password=box.password)
    session = ImapSession(opts).connect()
    try:
        session.select("INBOX")
        box.kill_connections()
        data = session.fetch([uid], ["BODY.PEEK[]"])
        assert bytes(data[uid][b"BODY[]"]) == box.fetch_raw("INBOX", uid)
        assert session.reconnects == 1
        assert imaplib_debug_level(session.client) == 0  # the new connection does not format debug output either
    finally:
        session.close()


def test_imaplib_debug_formatting_only_when_its_logger_wants_it(dovecot_mailbox: DovecotMailbox) -> None:
    """IMAPClient turns on imaplib's debug level 5, which repr()s every fetched mail; we turn it off
    (imapclient_compat: this fails when an imapclient release changes what it reaches into)."""
    import logging

    from kmrl_sync.connectors.imap.client import ImapSession
    from kmrl_sync.connectors.imap.imapclient_compat import imaplib_debug_level
    from kmrl_sync.connectors.imap.options import ImapOptions

    box = dovecot_mailbox
    opts = ImapOptions(host="127.0.0.1", port=box.port, tls=False, username=box.user, password=box.password)
    session = ImapSession(opts).connect()
    try:
        assert imaplib_debug_level(session.client) == 0
    finally:
        session.close()
    logger = logging.getLogger("imapclient.imaplib")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        session = ImapSession(opts).connect()
        assert imaplib_debug_level(session.client) == 5  # someone asked for the protocol trace: keep it
        session.close()
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- TLS


def _tls_connector(project, server: Dovecot, name: str, options: str) -> None:
    secret = project.root / f"{name}.secret"
    secret.write_text(server.users[server.default_user])
    project.connector(name, f"""\
type: imap
schedule: {{every: 1m}}
department: operations
options:
  host: 127.0.0.1
  username: "{server.default_user}"
  password_file: {secret}
  folders: [INBOX]
{options}""")


def test_implicit_tls_and_starttls(project, dovecot_tls: Dovecot, redis_client) -> None:
    server = dovecot_tls
    server.wipe_mailbox()
    server.append("INBOX", realistic_mail(1, seed=14))
    _tls_connector(project, server, "imaps", f"  port: {server.tls_port}\n  ca_file: {server.cert_path}\n"
                                               "  tls_verify: true\n")
    result = project.cli("sync", "imaps")
    # the cert is for 127.0.0.1/localhost; verification with the right CA must succeed
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(queued(redis_client)) == 1
    _tls_connector(project, server, "starttls", f"  port: {server.port}\n  tls: false\n  starttls: true\n"
                                                f"  ca_file: {server.cert_path}\n")
    project.cli("sync", "starttls", check=True)
    assert len(queued(redis_client)) == 2


def test_untrusted_certificate_is_refused_clearly(project, dovecot_tls: Dovecot, redis_client) -> None:
    _tls_connector(project, dovecot_tls, "untrusted", f"  port: {dovecot_tls.tls_port}\n")
    result = project.cli("sync", "untrusted")
    assert result.returncode == 1
    assert "certificate" in (result.stdout + result.stderr)


# --------------------------------------------------------------------------- IDLE


class _Log:
    """Records log events so the test knows when IDLE is established."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.fields: list[tuple[str, dict]] = []
        self.idling = threading.Event()

    def _record(self, event: str, **kw) -> None:
        self.events.append(event)
        self.fields.append((event, kw))
        if event == "idle watch started":
            self.idling.set()

    info = warning = error = debug = _record

    def bind(self, **_kw) -> _Log:
        return self


def _idle_connector(box: DovecotMailbox, log: _Log, idle: object = True):
    from kmrl_sync.connectors.imap import ImapConnector
    from kmrl_sync.connectors.imap.options import ImapOptions

    opts = ImapOptions(host="127.0.0.1", port=box.port, tls=False, username=box.user,
                       password=box.password, idle=idle)
    context = SimpleNamespace(name="idle", config=SimpleNamespace(options=opts), state=None, blobs=None,
                              log=log, should_stop=lambda: False)
    return ImapConnector(context)  # type: ignore[arg-type]


def test_idle_notifies_of_new_mail_a_reconnect_and_an_expunge_and_stops(dovecot_mailbox: DovecotMailbox) -> None:
    """How soon it notifies is measured in bench/imap (idle.py: one mail queued 0.56 s after
    delivery, 0.50 s of it Dovecot's own hold), not timed here."""
    box = dovecot_mailbox
    log = _Log()
    connector = _idle_connector(box, log)
    assert connector.supports_watch and connector.watch_enabled()
    notified = threading.Event()
    calls: Counter[str] = Counter()

    def notify(settled: bool = False) -> None:
        calls["settled" if settled else "unsettled"] += 1
        notified.set()

    stop = threading.Event()
    thread = threading.Thread(target=connector.watch, args=(notify, stop), daemon=True)
    thread.start()
    try:
        assert log.idling.wait(10), log.events
        box.append("INBOX", realistic_mail(1, seed=15))
        assert notified.wait(30), "no notify of new mail"
        # a dropped connection is re-established and reported as a possible change
        notified.clear()
        log.idling.clear()
        box.kill_connections()
        assert log.idling.wait(10), log.events
        assert notified.wait(30)
        notified.clear()
        box.expunge("INBOX", box.uids("INBOX")[0])
        assert notified.wait(30), "no notify on EXPUNGE"
    finally:
        stop.set()
        thread.join(timeout=3)
    assert not thread.is_alive(), "watch() did not return after stop"
    assert calls["settled"] >= 3 and not calls["unsettled"]  # a mail announced is whole: sync at once


def test_idle_on_a_named_folder_and_watch_disabled(dovecot_mailbox: DovecotMailbox) -> None:
    box = dovecot_mailbox
    box.create_folder("Alerts")
    assert not _idle_connector(box, _Log(), idle=False).watch_enabled()
    log = _Log()
    connector = _idle_connector(box, log, idle="Alerts")
    notified, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=connector.watch, args=(lambda settled=False: notified.set(), stop),
                              daemon=True)
    thread.start()
    try:
        assert log.idling.wait(10), log.events
        # IDLE reports the selected folder only (RFC 2177): idling on Alerts is what keeps INBOX's
        # mail from waking it, so that is what is checked, instead of waiting to see nothing happen.
        assert ("idle watch started", {"folder": "Alerts"}) in log.fields
        box.append("Alerts", realistic_mail(2, seed=16))
        assert notified.wait(30)
    finally:
        stop.set()
        thread.join(timeout=3)
    assert not thread.is_alive()


@pytest.mark.parametrize("attachments", [False])
def test_attachments_off_stores_only_mails(project, dovecot_mailbox, redis_client, attachments) -> None:
    box = dovecot_mailbox
    bulk_append(box, "INBOX", [realistic_mail(i, attachments=True, seed=17) for i in range(3)])
    write_connector(project, "noatt", box, folders="[INBOX]", extra="  attachments: false\n")
    project.cli("sync", "noatt", check=True)
    items = queued(redis_client)
    assert len(items) == 3 and not any("/att/" in d for _t, d in items)


def test_worker_processes_make_the_same_documents(project, dovecot_mailbox: DovecotMailbox, redis_client,
                                                  monkeypatch) -> None:
    """The multi-process path (used on machines with >= 4 CPUs) gives the same documents and blobs."""
    import hashlib

    from kmrl_sync.connectors.imap import makers

    monkeypatch.setattr(makers, "POOL_THRESHOLD", 0)
    monkeypatch.setattr(makers.DocumentMaker, "default_processes", staticmethod(lambda: 1))
    box = dovecot_mailbox
    bulk_append(box, "INBOX", list(realistic_mailbox(120, attachment_ratio=0.5, seed=18)))
    write_connector(project, "pool", box, folders="[INBOX]", extra="  batch_size: 10\n")
    summary = _engine(project).run("pool")
    assert summary.result == "ok", summary.error
    c = counts(redis_client)
    assert all(n == 1 for n in c.values())
    mails = [d for _t, d in c if "/att/" not in d]
    atts = [d for _t, d in c if "/att/" in d]
    assert len(mails) == 120 and len(atts) >= 60
    for _t, d in list(c)[:40]:
        meta = document(redis_client, d)
        assert hashlib.sha256(read_blob(meta["blob"])).hexdigest() == meta["sha256"] == meta["version"]


def _blob_paths(redis_client) -> list[str]:
    ids = [document_id_of("kmrl", key.decode()) for key in redis_client.scan_iter("kmrl:doc:{*}:*")]
    return [str(blob_path(blob)) for d in ids if (blob := document(redis_client, d)["blob"])]
