"""Every secret the process loads, registered once, and scrubbed from everything that leaves it.

Why structural: a secret can reach the outside through paths nobody wrote on purpose. An IMAP server
that echoes the client's command puts the password into its NO reply, which becomes an exception
message, a log line, the connector's `last_error` in Redis, a pub/sub event and the CLI's summary.
Masking each message where it is written misses the next such path. Instead:

- the code that reads a secret registers it here, once, when it is loaded (`register`, called by
  `secretfile.read_secret_file`, for every SecretStr the config holds and for a Redis URL's password);
- whatever leaves the process passes through `redact`: log lines (a structlog processor, and the
  rendered line again), stdout and stderr of every command (`RedactingStream`), the stats hash and
  the events written to Redis, and ConnectorError messages.

Not just the secret itself is scrubbed, also the forms it takes on the way out: URL-quoted (`%40`
for `@`), escaped as Python's repr of a str or of its UTF-8 bytes shows it (`\\xc3\\xa4`), as JSON
and as an IMAP quoted string escape it (`\\"`), and inside any base64 text (HTTP Basic, IMAP
`AUTHENTICATE PLAIN`), whatever precedes it there (`user:` or `\\0user\\0`).

Secrets shorter than MIN_LENGTH characters are registered but not scrubbed: masking every `ab` in
the output would make it unreadable and would tell where the secret occurs anyway. `kmrl-sync
check` warns about them (`short_secrets`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

MASK = "***"
MIN_LENGTH = 4  # shorter secrets are registered, reported by `check`, but not scrubbed
#: query parameters of a URL that carry a password (redis-py reads `password`)
PASSWORD_PARAMS = ("password", "pass", "passwd", "pwd", "secret", "token", "access_token")

_lock = threading.Lock()
_secrets: dict[str, str] = {}  # secret -> where it came from (for `check`'s warning)
_pattern: re.Pattern[str] | None = None  # every form of every scrubbable secret, longest first


# --------------------------------------------------------------------------- the forms of a secret


def _imap_quoted(text: str) -> str:
    """How an IMAP quoted string carries it (imaplib's LOGIN argument): `\\` and `"` escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _repr_str(text: str) -> str:
    return repr(text)[1:-1]


def _repr_bytes(text: str) -> str:
    """`b'...'` as imaplib's exceptions show a server's reply: non-ASCII as `\\xc3\\xa4`."""
    return repr(text.encode("utf-8", "surrogatepass"))[2:-1]


def _json(text: str) -> str:
    return json.dumps(text)[1:-1]


def _json_utf8(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


def _url(text: str) -> str:
    return quote(text, safe="")


def _url_lower(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(text, safe=""))


def _url_path(text: str) -> str:
    return quote(text)


def _url_form(text: str) -> str:
    return quote_plus(text)


_ESCAPES: tuple[Callable[[str], str], ...] = (
    _imap_quoted, _repr_str, _repr_bytes, _json, _json_utf8, _url, _url_lower, _url_path, _url_form,
)


def _base64_fragments(secret: bytes) -> set[str]:
    """The base64 text that a secret produces inside any base64 encoding, whatever precedes it.

    Base64 turns 3 bytes into 4 characters, so the characters a secret produces depend on where it
    starts modulo 3 (after `user:`, after `\\0user\\0`, ...). For each of the 3 alignments, keep
    the characters computed from the secret's bits alone (both alphabets).
    """
    fragments: set[str] = set()
    n = len(secret)
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret + b"\0\0").decode("ascii")
        inside = [i for i in range(len(encoded))
                  if (6 * i) // 8 >= offset and (6 * i + 5) // 8 < offset + n]
        if not inside:
            continue
        text = encoded[inside[0]:inside[-1] + 1]
        fragments.add(text)
        fragments.add(text.replace("+", "-").replace("/", "_"))
    return fragments


def forms(secret: str) -> set[str]:
    """Every text the secret may appear as in output: itself, escaped once or twice, base64."""
    found = {secret}
    for first in _ESCAPES:
        once = first(secret)
        found.add(once)
        for second in _ESCAPES:
            found.add(second(once))
    found |= _base64_fragments(secret.encode("utf-8", "surrogatepass"))
    return {f for f in found if len(f) >= MIN_LENGTH}


# --------------------------------------------------------------------------- the registry


def _rebuild() -> None:
    global _pattern
    everything: set[str] = set()
    for secret in _secrets:
        if len(secret) >= MIN_LENGTH:
            everything |= forms(secret)
    ordered = sorted(everything, key=lambda f: (-len(f), f))  # the longest form wins an overlap
    _pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None


def register(value: Any, source: str = "") -> None:
    """Remember a secret (str, bytes or pydantic SecretStr/SecretBytes) for scrubbing.

    Multi-line secrets (a PEM private key) are also registered line by line, so one line of one
    in a message is scrubbed too. Idempotent and cheap for a value already known.
    """
    if value is None:
        return
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value:
        return
    values = [value]
    if "\n" in value:
        values += [line.strip() for line in value.splitlines()
                   if len(line.strip()) >= 16 and not line.startswith("-----")]
    with _lock:
        new = [v for v in values if v not in _secrets]
        if not new:
            return
        for v in new:
            _secrets[v] = source
        _rebuild()


_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d*)?(?=$|[/?#])")
_QUERY_PARAM = re.compile(r"[?&;](?i:" + "|".join(PASSWORD_PARAMS) + r")=")
# a password value runs to the next `&name=` (so a password holding `&` is masked whole)
_QUERY_SECRET = re.compile(r"((?:^|[?&;])(?i:" + "|".join(PASSWORD_PARAMS) + r")=)(.*?)(?=&\w+=|$)", re.S)


def split_url(url: str) -> tuple[str, str | None, str]:
    """`scheme://`, the userinfo (None without one) and the rest of a URL, for showing it safely.

    The userinfo ends at the LAST `@` followed by a host name (redis-py reads `redis://:p@ss@host`
    so), which also keeps a password with an unencoded `/`, `?` or `#` inside the userinfo. Where
    a URL is ambiguous this errs on the side of treating more of it as userinfo.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    for at in reversed([i for i, c in enumerate(rest) if c == "@"]):
        userinfo = rest[:at]
        if not _HOST.match(rest, at + 1) or _QUERY_PARAM.search(userinfo):
            continue  # an `@` inside a query value (`?password=a@b`)
        if ":" not in userinfo and any(c in userinfo for c in "/?#="):
            continue  # a path or query, not a user name
        return scheme + sep, userinfo, rest[at + 1:]
    return scheme + sep, None, rest


def url_passwords(url: str) -> list[str]:
    """Every text of `url` that is, or may be read as, a password: the userinfo's password and the
    values of password query parameters, as written and decoded."""
    from urllib.parse import unquote

    _prefix, userinfo, rest = split_url(url)
    found: list[str] = []
    if userinfo is not None and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    query = rest.partition("?")[2]
    for match in _QUERY_SECRET.finditer(query):
        value = match.group(2)
        found += [value, value.split("#", 1)[0], value.split("&", 1)[0]]
    try:  # as urllib reads them (what redis-py gets)
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        found += [v for k, v in parse_qsl(parts.query) if k.lower() in PASSWORD_PARAMS]
    except ValueError:
        pass
    return list(dict.fromkeys(text for value in found if value for text in (value, unquote(value))))


def mask_url(url: str) -> str:
    """`url` with its userinfo's password and password query parameters replaced by `***`."""
    prefix, userinfo, rest = split_url(url)
    shown = prefix
    if userinfo is not None:
        shown += f"{userinfo.split(':', 1)[0]}:{MASK}@" if ":" in userinfo else f"{userinfo}@"
    head, sep, query = rest.partition("?")
    query = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, query)
    return redact(shown + head + sep + query)


def register_url(url: str, source: str = "") -> None:
    """Register the password(s) a URL carries (`redis://user:p@ss@host`, `?password=...`)."""
    for password in url_passwords(url):
        register(password, source)


def register_model(model: Any, source: str = "") -> None:
    """Register every SecretStr/SecretBytes held by a pydantic model, nested models included.

    The config calls this for each connector's options, so a connector type (ours or a third
    party's: S3 keys, encryption keys) needs nothing more than declaring its secrets as SecretStr
    or reading its secret files with `secretfile.read_secret_file`.
    """
    for where, value in _walk(model, source, depth=0):
        register(value, where)


def _walk(value: Any, where: str, depth: int) -> Iterable[tuple[str, Any]]:
    if depth > 20:
        return
    if hasattr(value, "get_secret_value"):
        yield where, value
    elif not isinstance(value, type) and hasattr(type(value), "model_fields"):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name, None), f"{where}.{name}", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]", depth + 1)


def short_secrets() -> list[str]:
    """Where each registered secret shorter than MIN_LENGTH came from (these are not scrubbed)."""
    with _lock:
        return sorted({source or "(unnamed)" for secret, source in _secrets.items() if len(secret) < MIN_LENGTH})


def forget(value: str) -> None:
    """Stop scrubbing `value`: for secrets that are replaced as a run goes on (Graph access tokens
    expire hourly), so a daemon that runs for months does not scrub an ever longer list."""
    with _lock:
        if _secrets.pop(value, None) is not None:
            _rebuild()


def forget_all() -> None:
    """Empty the registry (tests only: a process never un-learns a secret)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


# --------------------------------------------------------------------------- scrubbing


def redact(text: str) -> str:
    """`text` with every form of every registered secret replaced by `***`."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside dicts, lists and tuples (events, stats, log events)."""
    if _pattern is None:
        return value
    return _redact_deep(value, 0)


def _redact_deep(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact(value)
    if depth > 50:
        return value
    if isinstance(value, dict):
        return {_redact_deep(k, depth + 1): _redact_deep(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_deep(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_deep(v, depth + 1) for v in value)
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "replace")
        scrubbed = redact(text)
        return value if scrubbed == text else scrubbed
    return value


class OutputError(OSError):
    """Writing to the stream under a RedactingStream failed (a full disk behind `> file`, EIO).

    Its own class so the CLI can tell "our output could not be written" (one line on stderr,
    exit 1) from an OSError of the work itself (a bug or the document's failure). A reader going
    away stays a BrokenPipeError.
    """

    def __init__(self, exc: OSError, stream: Any):
        super().__init__(exc.errno, exc.strerror)
        self.stream = stream


class RedactingStream:
    """A text stream that scrubs what is written to it before passing it on.

    Installed over sys.stdout and sys.stderr by the CLI, so every print, table, traceback and log
    line of every command goes through `redact`. Text is passed on a line at a time (a secret split
    over two `write` calls of one line is still seen whole); `flush` passes on whatever is pending,
    so progress bars that redraw a line still show at once.
    """

    def __init__(self, stream: Any):
        self._stream = stream
        self._pending = ""
        self._lock = threading.RLock()

    @property
    def wrapped(self) -> Any:
        return self._stream

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            cut = max(self._pending.rfind("\n"), self._pending.rfind("\r"))
            if cut >= 0:
                ready, self._pending = self._pending[:cut + 1], self._pending[cut + 1:]
                self._pass_on(redact(ready))
        return len(text)

    def _pass_on(self, text: str | None) -> None:
        try:
            if text is None:
                self._stream.flush()
            else:
                self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(exc, self._stream) from exc

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                ready, self._pending = self._pending, ""
                self._pass_on(redact(ready))
            self._pass_on(None)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, buffer, ...
        return getattr(self._stream, name)


def redact_std_streams() -> Callable[[], None]:
    """Put RedactingStreams over sys.stdout and sys.stderr; return the function that undoes it."""
    import sys

    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)  # type: ignore[assignment]

    def restore() -> None:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, RedactingStream):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        sys.stdout, sys.stderr = saved

    return restore


__all__ = [
    "MASK", "MIN_LENGTH", "OutputError", "RedactingStream", "forget", "forget_all", "forms", "mask_url", "redact",
    "redact_std_streams", "redact_value", "register", "register_model", "register_url", "short_secrets", "split_url",
    "url_passwords",
]
