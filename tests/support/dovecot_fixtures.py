"""Pytest fixtures around :class:`tests.support.dovecot.Dovecot`.

Enable them in a conftest (or a test module) with::

    pytest_plugins = ["tests.support.dovecot_fixtures"]

Fixtures:

* ``dovecot`` (session): one shared plain-IMAP server for the whole run --
  starting Dovecot costs ~0.1 s, so we do it once.
* ``dovecot_mailbox`` (function): a brand-new user on that server, i.e. an
  empty, isolated mailbox per test, as a :class:`DovecotMailbox`.
* ``fresh_dovecot`` (function): a private server for tests that restart it,
  kill it or change its users, so they can't disturb other tests.
* ``dovecot_tls`` (module): a server that also has an IMAPS listener.

If the ``dovecot`` binary is missing the fixtures *skip*, unless the
environment variable ``KMRL_REQUIRE_DOVECOT`` is set (to anything but
``""``/``0``), in which case they *fail*: CI sets it so a broken image
can't silently turn the integration suite green.
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import Dovecot, DovecotMailbox, dovecot_binary

__all__ = [
    "dovecot",
    "dovecot_mailbox",
    "dovecot_tls",
    "fresh_dovecot",
    "require_dovecot",
]

_counter = itertools.count(1)


def require_dovecot() -> None:
    """Skip (or fail, with KMRL_REQUIRE_DOVECOT) when Dovecot isn't installed."""
    if dovecot_binary():
        return
    msg = ("Dovecot is not installed: `apt-get install dovecot-imapd` "
           "(needs the `dovecot` binary, usually /usr/sbin/dovecot)")
    if os.environ.get("KMRL_REQUIRE_DOVECOT", "") not in ("", "0"):
        pytest.fail(f"{msg}; KMRL_REQUIRE_DOVECOT is set, so this is an error", pytrace=False)
    pytest.skip(f"{msg}; set KMRL_REQUIRE_DOVECOT=1 to turn this skip into a failure")


def _start(base: Path, **kw: object) -> Dovecot:
    server = Dovecot(base, **kw)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """Shared server (plain IMAP, user ``sync@example.org`` / ``secret``).

    Tests may restart it or kick connections (ports and mail survive), but
    should not change the default user's password -- use
    ``dovecot_mailbox`` or ``fresh_dovecot`` for that.
    """
    require_dovecot()
    server = _start(tmp_path_factory.mktemp("dovecot"), tls=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dovecot_mailbox(dovecot: Dovecot) -> Iterator[DovecotMailbox]:
    """A fresh user with an empty mailbox on the shared server.

    New users are visible immediately (one passwd-file per user).  After the
    test, that user's connections are kicked so stray imap processes don't
    pile up over a long session.
    """
    if not dovecot.running:  # a previous test stopped it
        dovecot.start()
    user = f"t{next(_counter)}-{secrets.token_hex(3)}@example.org"
    password = secrets.token_urlsafe(9)
    dovecot.add_user(user, password)
    box = DovecotMailbox(dovecot, user, password)
    try:
        yield box
    finally:
        if dovecot.running:
            dovecot.kill_connections(user)


@pytest.fixture
def fresh_dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    """A private server per test (for restart/kill/password tests)."""
    require_dovecot()
    server = _start(tmp_path / "dovecot", tls=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dovecot_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    """Server with an extra IMAPS listener (``tls_port``; trust ``cert_path``).

    Note: with TLS on, the plain port also advertises STARTTLS.
    """
    require_dovecot()
    server = _start(tmp_path_factory.mktemp("dovecot-tls"), tls=True)
    try:
        if server.tls_port is None:
            pytest.skip("openssl not available, no IMAPS listener")
        yield server
    finally:
        server.stop()
