"""One IMAP connection: connect, TLS/STARTTLS, login, and retry-with-reconnect of every command.

Why a wrapper around IMAPClient: a dropped connection, a timeout or a server `BYE` in the middle of
a fetch must cost a reconnect and a repeat of that one command, not the run. `call()` runs a
command; on a connection-level failure it reconnects with backoff (tenacity), re-selects the folder
that was selected and runs the command again. Because the connector only advances its cursor
through committed batches, repeating a command is always safe. Authentication failures are never
retried: a wrong password retried in a loop only gets the account locked. A connection that drops
during LOGIN is not a refusal, though: it is retried like any other drop.

What a server says reaches messages as text (imaplib hands it over as bytes, which would show as
`b'...'`), scrubbed of secrets (a server may echo the LOGIN command, password included) before
it is shortened (a secret cut in half would no longer be recognised).
"""

from __future__ import annotations

import ast
import contextlib
import re
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import imapclient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from kmrl_sync.connectors.imap.imapclient_compat import quiet_imaplib
from kmrl_sync.connectors.imap.options import ImapOptions
from kmrl_sync.engine.connector import ConnectorError
from kmrl_sync.redaction import redact

T = TypeVar("T")

#: failures of the connection itself (worth a reconnect), as opposed to a NO/BAD reply
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (IMAPClientAbortError, OSError, EOFError)
RETRY_ATTEMPTS = 6
MAIL_FETCH_ABORTS = 2  # a mail fetch the server drops twice is split up (see syncer._fetch_chunk)


class UidValidityChanged(Exception):
    """The selected folder's UIDVALIDITY changed under us (after a reconnect): start it over."""


class FolderMissing(Exception):
    """SELECT/STATUS said the folder does not exist (NO reply)."""


class CommandAborted(Exception):
    """The connection dropped during the same command again, on a connection that was up: the
    command is the cause, not the network (Dovecot says BYE to a FETCH of a mail it cannot read)."""


class LoginRefused(ConnectorError):
    """The server answered LOGIN (or AUTHENTICATE) with NO: final, never retried."""


_BYTES_REPR = re.compile(r"""(?<![\w'"])b(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")""")


def _plain(text: str) -> str:
    """`b'[AUTHENTICATIONFAILED] ...'` (imaplib's way of showing a reply) as the text it is."""

    def decode(match: re.Match[str]) -> str:
        try:
            value = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            return match.group(0)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else match.group(0)

    return _BYTES_REPR.sub(decode, text) if "b'" in text or 'b"' in text else text


def server_text(exc: BaseException) -> str:
    """What went wrong, in plain text: a server's reply decoded, never as a Python bytes repr.

    imapclient raises LoginError(str(error)) from imaplib's error, whose argument is the reply as
    bytes; the original (its __context__) still has the bytes, which are decoded here.
    """
    source = exc
    if isinstance(exc, LoginError) and isinstance(exc.__context__, IMAPClientError):
        source = exc.__context__
    parts = [a.decode("utf-8", "replace") if isinstance(a, bytes | bytearray) else str(a) for a in source.args]
    text = " ".join(p for p in parts if p) or str(exc)
    return _plain(text) or type(exc).__name__


def _describe(exc: BaseException) -> str:
    text = redact(server_text(exc))  # before shortening: half a secret is not recognised
    return text if len(text) < 300 else text[:300] + "..."


class ImapSession:
    """A logged-in connection that survives drops; one per sync run (or per IDLE watcher)."""

    def __init__(self, options: ImapOptions, log: Any = None, *, attempts: int = RETRY_ATTEMPTS):
        self.options = options
        self.log = log
        self.attempts = attempts
        self.client: imapclient.IMAPClient | None = None
        self.capabilities: frozenset[bytes] = frozenset()
        self.selected: str | None = None
        self.selected_uidvalidity: int | None = None
        self.reconnects = 0

    @property
    def where(self) -> str:
        return f"{self.options.host}:{self.options.effective_port}"

    # ------------------------------------------------------------------ connecting

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.options.ca_file) if self.options.ca_file else None)
        if not self.options.tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _open(self) -> imapclient.IMAPClient:
        opts = self.options
        use_tls = opts.tls
        client = imapclient.IMAPClient(
            opts.host, port=opts.effective_port, ssl=use_tls,
            ssl_context=self._ssl_context() if use_tls else None, timeout=opts.timeout,
        )
        quiet_imaplib(client)
        # INTERNALDATE as the server gave it (with its offset), not converted to this machine's
        # local time as a naive datetime, which the documents would then have published as UTC
        client.normalise_times = False
        try:
            if opts.starttls:
                client.starttls(self._ssl_context())
            self._login(client)
        except BaseException:
            _close_quietly(client)
            raise
        return client

    def _login(self, client: imapclient.IMAPClient) -> None:
        """LOGIN, or AUTHENTICATE PLAIN for a name or password that is not ASCII.

        LOGIN's arguments are ASCII strings in IMAP4rev1 (imaplib cannot send anything else);
        AUTHENTICATE PLAIN (RFC 4616) carries UTF-8. A drop in the middle is a connection error
        (retried); only an answer from the server is a refusal.
        """
        opts = self.options
        password = opts.secret.get_secret_value()
        try:
            if opts.username.isascii() and password.isascii():
                client.login(opts.username, password)
            elif client.has_capability("AUTH=PLAIN"):
                client.plain_login(opts.username, password)
            else:
                field = "username" if not opts.username.isascii() else (
                    "password_file" if opts.password_file is not None else "password")
                raise ConnectorError(
                    f"options.{field} has non-ASCII characters, which only AUTHENTICATE PLAIN can carry, "
                    f"and IMAP server {self.where} does not offer it (use ASCII, or enable PLAIN on the server)")
        except LoginError as exc:
            if isinstance(exc.__context__, CONNECTION_ERRORS):
                raise exc.__context__ from None  # the connection dropped: not an answer
            raise

    def connect(self) -> ImapSession:
        """Connect and log in, retrying network failures; a refused login is final."""
        try:
            for attempt in self._retrying():
                with attempt:
                    self._connect_once()
        except CONNECTION_ERRORS as exc:
            raise ConnectorError(
                f"IMAP server {self.where} unreachable after {self.attempts} attempts: {_describe(exc)}") from None
        return self

    def _connect_once(self) -> None:
        self.close()
        try:
            self.client = self._open()
        except LoginError as exc:
            raise LoginRefused(
                f"IMAP login to {self.where} as {self.options.username} was refused: "
                f"{_describe(exc)} (check username and password)") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectorError(
                f"TLS certificate of {self.where} is not trusted: {exc.verify_message} "
                "(set ca_file, or tls_verify: false for a test server)") from None
        except ssl.SSLError as exc:
            raise ConnectorError(f"TLS handshake with {self.where} failed: {_describe(exc)}") from None
        except IMAPClientAbortError:
            raise  # the connection dropped (greeting, STARTTLS, LOGIN): retried
        except IMAPClientError as exc:  # e.g. STARTTLS not offered, LOGINDISABLED
            raise ConnectorError(f"IMAP server {self.where} refused the session: {_describe(exc)}") from None
        self.capabilities = frozenset(self.client.capabilities())
        if self.selected is not None:
            folder, validity = self.selected, self.selected_uidvalidity
            self.selected = None
            info = self.select(folder)
            if validity is not None and info["uidvalidity"] != validity:
                raise UidValidityChanged(folder)

    def _retrying(self) -> Retrying:
        def before_sleep(state: Any) -> None:
            if self.log is not None:
                exc = state.outcome.exception() if state.outcome else None
                self.log.warning("imap connection problem, reconnecting", server=self.where,
                                 attempt=state.attempt_number, error=_describe(exc) if exc else None)

        return Retrying(
            retry=retry_if_exception_type(CONNECTION_ERRORS),
            wait=wait_exponential_jitter(multiplier=0.2, max=20, jitter=0.3),
            stop=stop_after_attempt(self.attempts),
            reraise=True,
            before_sleep=before_sleep,
        )

    def call(self, fn: Callable[[imapclient.IMAPClient], T], *, aborts: int | None = None) -> T:
        """Run one command; on a dropped connection reconnect (re-selecting the folder) and repeat it.

        `aborts`: after the command itself failed this many times (each time on a connection that
        was up), raise CommandAborted instead of trying again. Failures to reconnect are the
        network's and keep the full retry policy.
        """
        first = True
        failures = 0
        try:
            for attempt in self._retrying():
                with attempt:
                    if not first or self.client is None:
                        self.reconnects += 0 if first else 1
                        self._connect_once()
                    first = False
                    assert self.client is not None
                    try:
                        return fn(self.client)
                    except CONNECTION_ERRORS as exc:
                        failures += 1
                        if aborts is not None and failures >= aborts:
                            self._drop()  # the next command connects afresh, without a doomed attempt
                            raise CommandAborted(_describe(exc)) from None
                        raise
        except CONNECTION_ERRORS as exc:
            raise ConnectorError(
                f"IMAP server {self.where} unreachable after {self.attempts} attempts: {_describe(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ commands

    @property
    def condstore(self) -> bool:
        return b"CONDSTORE" in self.capabilities

    def list_folders(self) -> list[tuple[tuple[bytes, ...], str]]:
        rows = self.call(lambda c: c.list_folders())
        return [(tuple(flags), name if isinstance(name, str) else name.decode("utf-8", "replace"))
                for flags, _delim, name in rows]

    def status(self, folder: str) -> dict[str, int]:
        what = [b"MESSAGES", b"UIDNEXT", b"UIDVALIDITY"] + ([b"HIGHESTMODSEQ"] if self.condstore else [])
        try:
            raw = self.call(lambda c: c.folder_status(folder, what))
        except IMAPClientError as exc:
            if isinstance(exc, IMAPClientAbortError):
                raise
            raise FolderMissing(f"{folder}: {_describe(exc)}") from None
        return {k.decode().lower(): int(v) for k, v in raw.items()}

    def select(self, folder: str) -> dict[str, int]:
        """EXAMINE (read-only SELECT): fetching with BODY.PEEK never sets \\Seen either way."""
        def run(c: imapclient.IMAPClient) -> dict[bytes, Any]:
            return c.select_folder(folder, readonly=True)

        try:
            raw = self.call(run)
        except IMAPClientError as exc:
            if isinstance(exc, IMAPClientAbortError):
                raise
            raise FolderMissing(f"{folder}: {_describe(exc)}") from None
        info = {
            "uidvalidity": int(raw.get(b"UIDVALIDITY", 0)),
            "uidnext": int(raw.get(b"UIDNEXT", 0)),
            "messages": int(raw.get(b"EXISTS", 0)),
            "highestmodseq": int(raw.get(b"HIGHESTMODSEQ", 0) or 0),
        }
        self.selected, self.selected_uidvalidity = folder, info["uidvalidity"]
        return info

    def search_uids(self, criteria: list[str]) -> list[int]:
        return sorted(self.call(lambda c: c.search(criteria)))

    def fetch(self, uids: list[int], items: list[str]) -> dict[int, dict[bytes, Any]]:
        return self.call(lambda c: c.fetch(uids, items))

    def fetch_sizes(self, uids: list[int]) -> dict[int, dict[bytes, Any]]:
        """RFC822.SIZE of `uids`; CommandAborted, like `fetch_mails`, if the server drops it twice."""
        return self.call(lambda c: c.fetch(uids, ["RFC822.SIZE"]), aborts=MAIL_FETCH_ABORTS) if uids else {}

    def fetch_mails(self, uids: list[int]) -> dict[int, dict[bytes, Any]]:
        """BODY.PEEK[] and INTERNALDATE of `uids`; CommandAborted when the server drops the
        connection over it twice (see syncer._fetch_chunk)."""
        return self.call(lambda c: c.fetch(uids, ["BODY.PEEK[]", "INTERNALDATE"]),
                         aborts=MAIL_FETCH_ABORTS) if uids else {}

    def _drop(self) -> None:
        """Forget a connection the server has closed (no LOGOUT: there is no one to say it to)."""
        if self.client is not None:
            client, self.client = self.client, None
            _close_quietly(client)

    def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            try:
                client.logout()
            except Exception:
                _close_quietly(client)


def _close_quietly(client: imapclient.IMAPClient) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()
