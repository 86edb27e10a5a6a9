"""A private, throw-away Dovecot IMAP server for tests and benchmarks.

Why a real Dovecot instead of a fake: the sync engine has to cope with real
server behaviour (UIDVALIDITY changes, MOVE/UIDPLUS responses, connection
drops, how literals and line endings are stored).  A fake would only encode
our own assumptions.

Everything the server needs (config, passwd-file, Maildirs, runtime sockets,
logs, TLS cert) lives under ``base_dir``; the system's ``/etc/dovecot`` and
system service are never read or touched.  Only ``127.0.0.1`` is bound.

Typical use::

    with Dovecot(tmp_path, users={"sync@example.org": "secret"}) as d:
        uid = d.append("INBOX", raw_bytes)
        with d.client() as c:   # logged-in imapclient.IMAPClient
            ...

Root handling: Dovecot refuses to access mail as uid 0, so when the tests run
as root the mail files are owned by an unprivileged account (``nobody`` by
default) and the internal/login services use the Debian ``dovecot`` /
``dovenull`` accounts (or ``nobody``).  pytest keeps ``/tmp/pytest-of-root``
at mode 0700 (and re-chmods it whenever a session starts), so no
unprivileged process may need to *traverse* base_dir's ancestors: the auth
service runs as root, and each imap process chroots into ``base_dir/mail``
(passwd-file home ``.../mail/./<user>``) while still root, before dropping
to the mail uid.  Nothing outside base_dir is ever chmod-ed.  As a normal
user everything runs as that user and the login/anvil chroots are disabled.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import imapclient
from imapclient.exceptions import LoginError

from tests.support.waiting import wait_until

__all__ = [
    "DEFAULT_USERS",
    "Dovecot",
    "DovecotError",
    "DovecotMailbox",
    "LoginError",
    "dovecot_binary",
    "dovecot_version",
    "free_port",
]

HOST = "127.0.0.1"
DEFAULT_USERS: Mapping[str, str] = {"sync@example.org": "secret"}
_SEARCH_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin")
# Characters that would break the passwd-file format or the per-user file path.
_BAD_USER_CHARS = re.compile(r"[:/\s\x00]")


class DovecotError(RuntimeError):
    """The private Dovecot could not be configured, started or driven."""


# Servers still running when the interpreter exits (a test forgot stop(), or
# Ctrl-C): stop them so no Dovecot outlives the test run.
_RUNNING: weakref.WeakSet[Dovecot] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- #
# discovery helpers
# --------------------------------------------------------------------------- #
# Tiny init for the Dovecot process tree.  When the master exits, its
# children (stats, log, ...) are re-parented; in containers PID 1 often never
# reaps them, leaving zombies after every stop().  This wrapper makes itself a
# child subreaper, forwards signals to the master and reaps every descendant,
# exiting (with the master's status) only when the whole tree is gone.
_REAPER = r"""
import ctypes, os, signal, subprocess, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
except Exception:
    pass
master = subprocess.Popen(sys.argv[1:])
def forward(sig, _frame):
    try:
        os.kill(master.pid, sig)
    except ProcessLookupError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
rc = 0
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == master.pid:
        rc = os.waitstatus_to_exitcode(status)
sys.exit(rc)
"""


def _which(name: str) -> str | None:
    """``shutil.which`` that also looks in sbin dirs (often not in a user's PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SEARCH_DIRS:
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def dovecot_binary() -> str | None:
    """Path of the ``dovecot`` master binary, or None if Dovecot isn't installed."""
    return _which("dovecot")


def dovecot_version(binary: str | None = None) -> tuple[int, ...]:
    """Installed Dovecot version, e.g. ``(2, 3, 19, 1)``.

    Needed because 2.3 and 2.4 configs are mutually incompatible.
    """
    binary = binary or dovecot_binary()
    if not binary:
        raise DovecotError("dovecot binary not found (apt-get install dovecot-imapd)")
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    m = re.match(r"\s*(\d+(?:\.\d+)*)", out)
    if not m:
        raise DovecotError(f"cannot parse `dovecot --version` output: {out!r}")
    return tuple(int(x) for x in m.group(1).split("."))


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (racy by nature; start() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _Accounts:
    """OS accounts the Dovecot processes run as."""

    internal_user: str
    internal_group: str
    login_user: str
    mail_uid: int
    mail_gid: int


def _pick_accounts(mail_user: str | None) -> _Accounts:
    """Choose OS accounts depending on whether we run as root."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(os.getegid()).gr_name
        return _Accounts(me.pw_name, group, me.pw_name, me.pw_uid, os.getegid())

    def existing(*names: str) -> str:
        for n in names:
            with contextlib.suppress(KeyError):
                pwd.getpwnam(n)
                return n
        raise DovecotError(f"none of the accounts {names} exist")

    internal = existing("dovecot", "nobody")
    login = existing("dovenull", "nobody")
    mail = pwd.getpwnam(mail_user or existing("nobody", "dovenull"))
    if mail.pw_uid == 0:
        raise DovecotError("Dovecot refuses mail access as uid 0; pick another mail_user")
    igid = pwd.getpwnam(internal).pw_gid
    return _Accounts(internal, grp.getgrgid(igid).gr_name, login, mail.pw_uid, mail.pw_gid)


# --------------------------------------------------------------------------- #
# the server
# --------------------------------------------------------------------------- #
class Dovecot:
    """A private Dovecot on 127.0.0.1, configured and owned by the test.

    Use as a context manager (or call :meth:`start` / :meth:`stop`).  All the
    convenience methods open a short-lived logged-in connection of their own,
    so they are independent of any connection the code under test holds.

    Server facts tests may rely on: Maildir++ storage, hierarchy separator
    ``"."`` (``"/"`` is rejected in folder names), capabilities include
    UIDPLUS, MOVE, CONDSTORE, QRESYNC, IDLE; a failed LOGIN takes ~0.5 s
    (Dovecot flushes auth failures on a 500 ms timer; penalties are off).
    """

    host = HOST

    def __init__(
        self,
        base_dir: Path | str,
        users: Mapping[str, str] | None = None,
        *,
        tls: bool = False,
        mail_user: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        """Prepare (but don't start) a server rooted at ``base_dir``.

        :param users: login -> password; the first one is the default user of
            all helpers.  Defaults to ``{"sync@example.org": "secret"}``.
        :param tls: also open an IMAPS listener with a self-signed cert (only
            if ``openssl`` is available; check :attr:`tls_port`).  Off by
            default because Dovecot then also advertises STARTTLS on the
            plain port, which a client might try against an untrusted cert.
        :param mail_user: when running as root, the OS account owning the mail
            files (default ``nobody``).
        """
        binary = dovecot_binary()
        if not binary:
            raise DovecotError("dovecot binary not found (apt-get install dovecot-imapd)")
        self.binary: str = binary
        self.doveadm_binary: str | None = _which("doveadm")
        self.version: tuple[int, ...] = dovecot_version(binary)
        self.base_dir = Path(base_dir).resolve()
        self.users: dict[str, str] = dict(users if users is not None else DEFAULT_USERS)
        if not self.users:
            raise ValueError("at least one user is needed")
        self.default_user: str = next(iter(self.users))
        self.want_tls = tls
        self.start_timeout = start_timeout
        self.accounts = _pick_accounts(mail_user)

        self.conf_path = self.base_dir / "dovecot.conf"
        self.users_dir = self.base_dir / "users.d"
        self.mail_root = self.base_dir / "mail"
        self.run_dir = self.base_dir / "run"
        self.state_dir = self.base_dir / "state"
        self.log_path = self.base_dir / "dovecot.log"
        self.stdout_path = self.base_dir / "dovecot.stdout"
        self.cert_path: Path | None = None
        self.key_path: Path | None = None

        self.port: int = 0
        self.tls_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._last_passwd_mtime = 0

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the reaper wrapping the master = process-group id of the tree."""
        return self._proc.pid if self.running and self._proc else None

    def start(self) -> None:
        """Write the config (first time) and start Dovecot; wait for the greeting.

        Ports are chosen on the first start and kept across :meth:`restart`,
        so clients can reconnect to the same address.  If a port turns out to
        be taken (free_port is racy), new ports are picked and we retry.
        """
        if self.running:
            return
        first = self.port == 0
        if first:
            self._prepare_dirs()
        last_err: Exception | None = None
        for _attempt in range(3 if first else 1):
            if first:
                self.port = free_port()
                self.tls_port = free_port() if self.cert_path else None
                self.write_config()
            try:
                self._spawn_and_wait()
                _RUNNING.add(self)
                return
            except DovecotError as e:
                last_err = e
                self._terminate()
                if "in use" not in str(e):
                    raise
        assert last_err is not None
        raise last_err

    def stop(self) -> None:
        """Stop Dovecot and every process it spawned (whole process group)."""
        self._terminate()

    def restart(self) -> None:
        """Full stop + start on the same ports; drops every client connection."""
        self.stop()
        self.start()

    def _prepare_dirs(self) -> None:
        """Create the directory layout, TLS cert and per-user passwd files."""
        for d in (self.base_dir, self.users_dir, self.mail_root, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chmod(self.mail_root, 0o755)  # chroot target; homes below are chowned
        if self.want_tls and _which("openssl"):
            self._make_cert()
        for user, password in self.users.items():
            self._write_user(user, password)

    def _make_cert(self) -> None:
        """Self-signed cert for 127.0.0.1/localhost (EC key: generation is instant)."""
        cert, key = self.base_dir / "cert.pem", self.base_dir / "key.pem"
        if not (cert.exists() and key.exists()):
            cmd = [
                _which("openssl") or "openssl", "req", "-x509", "-nodes",
                "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", str(key), "-out", str(cert), "-days", "30",
                "-subj", "/CN=localhost",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, timeout=30)
            if res.returncode != 0:  # e.g. an old openssl without -addext: no TLS
                return
        self.cert_path, self.key_path = cert, key

    def _spawn_and_wait(self) -> None:
        """Run ``dovecot -F`` in its own session and poll until IMAP greets."""
        with open(self.stdout_path, "ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _REAPER, self.binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group -> killpg on stop
                close_fds=True,
            )
        pending = [self.port] + ([self.tls_port] if self.tls_port else [])

        def all_greet() -> bool:
            if self._proc.poll() is not None:
                raise DovecotError(
                    f"dovecot exited with {self._proc.returncode}:\n{self._diagnostics()}"
                )
            while pending and self._greets(pending[0], tls=pending[0] == self.tls_port):
                pending.pop(0)
            return not pending

        wait_until(all_greet, self.start_timeout, lambda: f"dovecot to greet:\n{self._diagnostics()}",
                   interval=0.02)

    def _greets(self, port: int, *, tls: bool) -> bool:
        """True if ``port`` answers with an IMAP ``* OK`` greeting."""
        try:
            with socket.create_connection((HOST, port), timeout=2) as raw:
                if tls:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    with ctx.wrap_socket(raw) as s:
                        return s.recv(200).startswith(b"* OK")
                return raw.recv(200).startswith(b"* OK")
        except OSError:
            return False

    def _terminate(self) -> None:
        """SIGTERM the process group, SIGKILL it if it doesn't go away."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True => pgid == pid
        # SIGTERM the whole group at once: the master alone would take ~1 s
        # and leave logged-in imap processes (and log/stats serving them)
        # running.  The reaper just forwards its SIGTERM and exits once every
        # descendant is reaped.  (Each process logs "Killed with signal 15".)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _diagnostics(self) -> str:
        """Tail of stdout and log, for error messages."""
        parts = []
        for p in (self.stdout_path, self.log_path):
            if p.exists():
                parts.append(f"--- {p.name}:\n" + p.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def log_text(self) -> str:
        """The server log (useful in assertion messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------ config
    def write_config(self) -> None:
        """(Re)write dovecot.conf for the installed version (2.3 or 2.4+)."""
        text = self._config_24() if self.version >= (2, 4) else self._config_23()
        self.conf_path.write_text(text)

    def _common_service_blocks(self, listen_key: str, ssl_flag: str) -> str:
        """Listener/service blocks; identical in 2.3 and 2.4 except key names."""
        rootless = os.geteuid() != 0
        tls = ""
        if self.tls_port:
            tls = (f"  inet_listener imaps {{\n    {listen_key} = {HOST}\n"
                   f"    port = {self.tls_port}\n    {ssl_flag}\n  }}\n")
        else:
            tls = "  inet_listener imaps {\n    port = 0\n  }\n"
        chroot = "  chroot =\n" if rootless else ""
        # As root: auth reads users.d as root, so no unprivileged process
        # ever has to traverse the ancestors of base_dir (see module doc).
        auth = "" if rootless else "service auth {\n  user = root\n}\n"
        return (
            f"{auth}"
            "service imap-login {\n"
            f"  inet_listener imap {{\n    {listen_key} = {HOST}\n    port = {self.port}\n  }}\n"
            f"{tls}{chroot}"
            "}\n"
            # no penalties: tests deliberately fail logins
            "service anvil {\n"
            f"{chroot}"
            "  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n"
            "}\n"
        )

    def _config_23(self) -> str:
        a = self.accounts
        ssl_lines = "ssl = no\n"
        if self.tls_port and self.cert_path and self.key_path:
            ssl_lines = (f"ssl = yes\nssl_cert = <{self.cert_path}\n"
                         f"ssl_key = <{self.key_path}\n")
        users = self.users_dir / "%u"
        return (
            "# generated by tests/support/dovecot.py -- private test instance (2.3 syntax)\n"
            f"base_dir = {self.run_dir}\n"
            f"state_dir = {self.state_dir}\n"
            f"log_path = {self.log_path}\n"
            f"info_log_path = {self.log_path}\n"
            "protocols = imap\n"
            f"listen = {HOST}\n"
            f"{ssl_lines}"
            "disable_plaintext_auth = no\n"
            "auth_mechanisms = plain login\n"
            "auth_failure_delay = 0\n"
            f"login_trusted_networks = {HOST}/32\n"
            f"default_internal_user = {a.internal_user}\n"
            f"default_internal_group = {a.internal_group}\n"
            f"default_login_user = {a.login_user}\n"
            "first_valid_uid = 1\nfirst_valid_gid = 1\n"
            f"valid_chroot_dirs = {self.mail_root}\n"
            "mail_location = maildir:~/Maildir\n"
            "mail_max_userip_connections = 200\n"
            "verbose_proctitle = yes\n"  # lets kill_connections find a user's imap pids
            "passdb {\n  driver = passwd-file\n"
            f"  args = scheme=PLAIN {users}\n}}\n"
            "userdb {\n  driver = passwd-file\n"
            f"  args = {users}\n}}\n"
            + self._common_service_blocks("address", "ssl = yes")
        )

    def _config_24(self) -> str:
        a = self.accounts
        ssl_lines = "ssl = no\n"
        if self.tls_port and self.cert_path and self.key_path:
            ssl_lines = (f"ssl = yes\nssl_server_cert_file = {self.cert_path}\n"
                         f"ssl_server_key_file = {self.key_path}\n")
        users = self.users_dir / "%{user}"
        return (
            "# generated by tests/support/dovecot.py -- private test instance (2.4 syntax)\n"
            "dovecot_config_version = 2.4.0\n"
            "dovecot_storage_version = 2.4.0\n"
            f"base_dir = {self.run_dir}\n"
            f"state_dir = {self.state_dir}\n"
            f"log_path = {self.log_path}\n"
            f"info_log_path = {self.log_path}\n"
            "protocols = imap\n"
            f"listen = {HOST}\n"
            f"{ssl_lines}"
            "auth_allow_cleartext = yes\n"
            "auth_mechanisms = plain login\n"
            "auth_failure_delay = 0\n"
            f"login_trusted_networks = {HOST}/32\n"
            f"default_internal_user = {a.internal_user}\n"
            f"default_internal_group = {a.internal_group}\n"
            f"default_login_user = {a.login_user}\n"
            "first_valid_uid = 1\nfirst_valid_gid = 1\n"
            f"valid_chroot_dirs = {self.mail_root}\n"
            "mail_driver = maildir\n"
            "mail_path = ~/Maildir\n"
            "mail_max_userip_connections = 200\n"
            "verbose_proctitle = yes\n"  # lets kill_connections find a user's imap pids
            "passdb passwd-file {\n"
            f"  passwd_file_path = {users}\n}}\n"
            "userdb passwd-file {\n"
            f"  passwd_file_path = {users}\n}}\n"
            + self._common_service_blocks("listen", "ssl = yes")
        )

    # ------------------------------------------------------------ users
    def _write_user(self, user: str, password: str) -> None:
        """Write the one-line passwd-file for ``user`` and create its home.

        One file per user (the config path contains ``%u``) because Dovecot
        re-stats a passwd-file at most once per second: a brand-new file is
        always read fresh, so adding users never races with earlier logins.
        """
        if _BAD_USER_CHARS.search(user) or user in (".", ".."):
            raise ValueError(f"unsupported user name {user!r}")
        if ":" in password or "\n" in password:
            raise ValueError("password must not contain ':' or newlines")
        a = self.accounts
        home = self.mail_root / user
        home.mkdir(parents=True, exist_ok=True)
        # As root the imap process chroots into mail_root ("/./" marks the
        # chroot) before dropping to the mail uid, so it never needs search
        # permission on base_dir's ancestors.
        home_field = str(home)
        if os.geteuid() == 0:
            os.chown(home, a.mail_uid, a.mail_gid)
            home_field = f"{self.mail_root}/./{user}"
        path = self.users_dir / user
        tmp = path.with_name(f".{user}.tmp")
        tmp.write_text(f"{user}:{{PLAIN}}{password}:{a.mail_uid}:{a.mail_gid}::{home_field}::\n")
        os.chmod(tmp, 0o644)
        # Make sure mtime differs from any previous version (1 s resolution).
        mtime = max(int(time.time()), self._last_passwd_mtime + 1)
        self._last_passwd_mtime = mtime
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)

    def add_user(self, user: str, password: str = "secret") -> None:
        """Add a login with an empty mailbox; usable immediately."""
        self.users[user] = password
        self._write_user(user, password)

    def set_password(self, user: str | None, password: str) -> None:
        """Change a user's password (e.g. to make the engine's login fail).

        Dovecot only re-checks a passwd-file once per second, so this waits
        until the next second boundary (<= 1 s) to guarantee the change is
        visible.  For a one-off auth failure, ``d.client(password="wrong")``
        is instant.
        """
        user = user or self.default_user
        self.users[user] = password
        self._write_user(user, password)
        time.sleep(1.02 - (time.time() % 1.0))

    def remove_user(self, user: str) -> None:
        """Delete a login (its mail stays on disk); waits like set_password."""
        self.users.pop(user, None)
        with contextlib.suppress(FileNotFoundError):
            (self.users_dir / user).unlink()
        time.sleep(1.02 - (time.time() % 1.0))

    def maildir(self, user: str | None = None) -> Path:
        """Filesystem path of a user's Maildir (INBOX is its root)."""
        return self.mail_root / (user or self.default_user) / "Maildir"

    # ------------------------------------------------------------ IMAP helpers
    def client(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        tls: bool = False,
        timeout: float = 10.0,
    ) -> imapclient.IMAPClient:
        """A logged-in ``IMAPClient`` (plain port, or the IMAPS port if ``tls``).

        Raises ``imapclient.exceptions.LoginError`` on bad credentials.  The
        caller owns the connection (use it as a context manager).
        """
        user = user or self.default_user
        password = self.users.get(user, "") if password is None else password
        if tls:
            if not self.tls_port or not self.cert_path:
                raise DovecotError("TLS listener not available (no openssl?)")
            c = imapclient.IMAPClient(HOST, port=self.tls_port, ssl=True,
                                      ssl_context=self.ssl_context(), timeout=timeout)
        else:
            c = imapclient.IMAPClient(HOST, port=self.port, ssl=False, timeout=timeout)
        try:
            c.login(user, password)
        except BaseException:
            with contextlib.suppress(Exception):
                c.shutdown()
            raise
        return c

    def ssl_context(self) -> ssl.SSLContext:
        """An SSLContext that trusts exactly this server's self-signed cert."""
        if not self.cert_path:
            raise DovecotError("no TLS certificate")
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        ctx.check_hostname = False  # cert is for 127.0.0.1/localhost anyway
        return ctx

    @contextlib.contextmanager
    def _session(self, user: str | None) -> Iterator[imapclient.IMAPClient]:
        c = self.client(user)
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def append(
        self,
        folder: str,
        raw: bytes,
        flags: Iterable[str | bytes] = (),
        user: str | None = None,
        msg_time: dt.datetime | None = None,
    ) -> int:
        """APPEND ``raw`` verbatim and return its UID (from UIDPLUS APPENDUID)."""
        with self._session(user) as c:
            resp = c.append(folder, raw, flags=tuple(flags), msg_time=msg_time)
        text = resp.decode() if isinstance(resp, bytes) else str(resp)
        m = re.search(r"APPENDUID \d+ (\d+)", text)
        if not m:
            raise DovecotError(f"no APPENDUID in APPEND response {text!r}")
        return int(m.group(1))

    def create_folder(self, folder: str, user: str | None = None) -> None:
        """CREATE (and SUBSCRIBE, like a mail client would)."""
        with self._session(user) as c:
            c.create_folder(folder)
            c.subscribe_folder(folder)

    def delete_folder(self, folder: str, user: str | None = None) -> None:
        """DELETE a folder and its mails (not INBOX)."""
        with self._session(user) as c:
            with contextlib.suppress(Exception):
                c.unsubscribe_folder(folder)
            c.delete_folder(folder)

    def list_folders(self, user: str | None = None) -> list[str]:
        """Names of all folders (LIST "" *)."""
        with self._session(user) as c:
            return [name for _flags, _delim, name in c.list_folders()]

    def uids(self, folder: str, user: str | None = None) -> list[int]:
        """All UIDs in ``folder``, ascending."""
        with self._session(user) as c:
            c.select_folder(folder, readonly=True)
            return sorted(c.search("ALL"))

    def fetch_raw(self, folder: str, uid: int, user: str | None = None) -> bytes:
        """``BODY.PEEK[]`` of one message exactly as the server returns it."""
        with self._session(user) as c:
            c.select_folder(folder, readonly=True)
            data = c.fetch([uid], ["BODY.PEEK[]"])
        if uid not in data:
            raise KeyError(f"UID {uid} not in {folder}")
        return bytes(data[uid][b"BODY[]"])

    def flags(self, folder: str, uid: int, user: str | None = None) -> tuple[bytes, ...]:
        """FLAGS of one message."""
        with self._session(user) as c:
            c.select_folder(folder, readonly=True)
            return tuple(c.get_flags([uid]).get(uid, ()))

    def move(self, folder: str, uid: int, dest: str, user: str | None = None) -> int:
        """UID MOVE one message; return its new UID in ``dest``.

        imapclient hides MOVE's untagged COPYUID, so the new UID is found as
        the message that appeared at or above the destination's old UIDNEXT.
        """
        with self._session(user) as c:
            uidnext = int(c.folder_status(dest, [b"UIDNEXT"])[b"UIDNEXT"])
            c.select_folder(folder)
            c.move([uid], dest)
            c.select_folder(dest, readonly=True)
            new = sorted(c.search(["UID", f"{uidnext}:*"]))
        new = [u for u in new if u >= uidnext]
        if len(new) != 1:
            raise DovecotError(f"expected one new UID in {dest}, got {new}")
        return new[0]

    def expunge(self, folder: str, uid: int, user: str | None = None) -> None:
        """Flag ``\\Deleted`` and UID EXPUNGE exactly this one message."""
        with self._session(user) as c:
            c.select_folder(folder)
            c.add_flags([uid], [imapclient.DELETED])
            c.uid_expunge([uid])

    def set_flags(self, folder: str, uid: int, flags: Iterable[str | bytes],
                  user: str | None = None) -> None:
        """Replace the flags of one message (e.g. simulate another client)."""
        with self._session(user) as c:
            c.select_folder(folder)
            c.set_flags([uid], tuple(flags))

    def uidvalidity(self, folder: str, user: str | None = None) -> int:
        """Current UIDVALIDITY of ``folder`` (via STATUS)."""
        with self._session(user) as c:
            return int(c.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def recreate_folder_with_same_mails(self, folder: str, user: str | None = None) -> int:
        """Make ``folder`` get a new UIDVALIDITY while keeping identical mails.

        Simulates the server-side event a sync engine must survive (mailbox
        recreated/restored, index lost).  Normal folders: fetch everything,
        DELETE, CREATE, re-APPEND with the same flags and INTERNALDATE.  INBOX
        can't be deleted over IMAP, so its connections are kicked and its
        Dovecot index/uidlist files are removed -- exactly what happens when a
        server loses its index.  Dovecot hands out UIDVALIDITY from a per-user
        counter (``dovecot-uidvalidity``), so the new value always differs,
        even within the same second.  Returns the new UIDVALIDITY.
        """
        user = user or self.default_user
        old = self.uidvalidity(folder, user)
        if folder.upper() == "INBOX":
            self._reset_inbox_index(user)
        else:
            with self._session(user) as c:
                c.select_folder(folder, readonly=True)
                uids = sorted(c.search("ALL"))
                msgs = c.fetch(uids, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"]) if uids else {}
                c.close_folder()
                c.delete_folder(folder)
                c.create_folder(folder)
                for u in uids:
                    m = msgs[u]
                    flags = tuple(f for f in m[b"FLAGS"] if f != imapclient.RECENT)
                    c.append(folder, bytes(m[b"BODY[]"]), flags=flags,
                             msg_time=m[b"INTERNALDATE"])
        new = self.uidvalidity(folder, user)
        if new == old:
            raise DovecotError(f"UIDVALIDITY of {folder} did not change ({old})")
        return new

    def _reset_inbox_index(self, user: str) -> None:
        """Drop INBOX's uidlist/index so Dovecot renumbers it with a new UIDVALIDITY."""
        self.kill_connections(user)
        md = self.maildir(user)
        for p in md.iterdir():
            if p.is_file() and (p.name == "dovecot-uidlist" or p.name.startswith("dovecot.index")):
                p.unlink()

    # ------------------------------------------------------------ faults
    def doveadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``doveadm -c <our conf> ARGS`` against this instance."""
        if not self.doveadm_binary:
            raise DovecotError("doveadm not found")
        res = subprocess.run([self.doveadm_binary, "-c", str(self.conf_path), *args],
                             capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise DovecotError(f"doveadm {' '.join(args)} failed ({res.returncode}): "
                               f"{res.stderr.strip()}")
        return res

    def kill_connections(self, user: str | None = None) -> None:
        """Drop established IMAP connections (all users, or one) like a network cut.

        Uses ``doveadm kick`` (the server stays up, new logins work at once);
        falls back to :meth:`restart` without doveadm.  Waits until the
        killed ``imap`` processes are gone so callers see a consistent state.
        """
        if not self.doveadm_binary:
            self.restart()
            return
        before = self._imap_pids(user)
        res = self.doveadm("kick", user or "*", check=False)
        # exit 68 (EX_NOUSER) = nobody to kick; anything else unexpected -> restart
        if res.returncode not in (0, 68):
            self.restart()
            return
        # Wait for the kicked processes to be gone, so e.g. index files can be
        # removed safely right after (and the client sees EOF, not a race).
        wait_until(lambda: not before & self._imap_pids(user), 5, "the kicked imap processes to exit",
                   interval=0.01)

    def _imap_pids(self, user: str | None = None) -> set[int]:
        """PIDs of this instance's ``imap`` processes (optionally for one user).

        Identified by process group, and by the user name that
        ``verbose_proctitle`` puts into the command line
        (``dovecot/imap [user 127.0.0.1 ...]``).
        """
        pgid = self.pid
        pids: set[int] = set()
        if pgid is None:
            return pids
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.getpgid(int(d.name)) != pgid:
                    continue
                if (d / "comm").read_text().strip() != "imap":
                    continue
                title = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                continue
            if user is None or f"[{user} " in title:
                pids.add(int(d.name))
        return pids

    def wipe_mailbox(self, user: str | None = None) -> None:
        """Delete every folder except INBOX and expunge INBOX."""
        with self._session(user) as c:
            for _flags, _delim, name in sorted(c.list_folders(), key=lambda f: -len(f[2])):
                if name.upper() != "INBOX":
                    c.delete_folder(name)
            c.select_folder("INBOX")
            uids = c.search("ALL")
            if uids:
                c.add_flags(uids, [imapclient.DELETED])
                c.expunge()


@dataclass
class DovecotMailbox:
    """One user's mailbox on a shared :class:`Dovecot`; helpers default to that user.

    Handed out by the ``dovecot_mailbox`` fixture so tests get isolation
    (fresh user) without paying for a server start each.
    """

    server: Dovecot
    user: str
    password: str

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def tls_port(self) -> int | None:
        return self.server.tls_port

    def client(
        self, password: str | None = None, *, tls: bool = False, timeout: float = 10.0
    ) -> imapclient.IMAPClient:
        """Logged-in client for this mailbox's user (``password`` to test failures)."""
        return self.server.client(self.user, password, tls=tls, timeout=timeout)

    def append(self, folder: str, raw: bytes, flags: Iterable[str | bytes] = (),
               msg_time: dt.datetime | None = None) -> int:
        return self.server.append(folder, raw, flags, user=self.user, msg_time=msg_time)

    def create_folder(self, folder: str) -> None:
        self.server.create_folder(folder, user=self.user)

    def delete_folder(self, folder: str) -> None:
        self.server.delete_folder(folder, user=self.user)

    def list_folders(self) -> list[str]:
        return self.server.list_folders(user=self.user)

    def uids(self, folder: str) -> list[int]:
        return self.server.uids(folder, user=self.user)

    def fetch_raw(self, folder: str, uid: int) -> bytes:
        return self.server.fetch_raw(folder, uid, user=self.user)

    def flags(self, folder: str, uid: int) -> tuple[bytes, ...]:
        return self.server.flags(folder, uid, user=self.user)

    def set_flags(self, folder: str, uid: int, flags: Iterable[str | bytes]) -> None:
        self.server.set_flags(folder, uid, flags, user=self.user)

    def move(self, folder: str, uid: int, dest: str) -> int:
        return self.server.move(folder, uid, dest, user=self.user)

    def expunge(self, folder: str, uid: int) -> None:
        self.server.expunge(folder, uid, user=self.user)

    def uidvalidity(self, folder: str) -> int:
        return self.server.uidvalidity(folder, user=self.user)

    def recreate_folder_with_same_mails(self, folder: str) -> int:
        return self.server.recreate_folder_with_same_mails(folder, user=self.user)

    def kill_connections(self) -> None:
        self.server.kill_connections(self.user)

    def set_password(self, password: str) -> None:
        self.password = password
        self.server.set_password(self.user, password)

    def maildir(self) -> Path:
        return self.server.maildir(self.user)
