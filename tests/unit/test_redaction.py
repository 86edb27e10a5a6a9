"""The secret registry: what it scrubs, in which forms, and Redis URLs shown without passwords."""

from __future__ import annotations

import base64
import io
import json
import string
from collections.abc import Iterator
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from kmrl_sync import redaction
from kmrl_sync.redaction import mask_url


@pytest.fixture(autouse=True)
def empty_registry() -> Iterator[None]:
    redaction.forget_all()
    yield
    redaction.forget_all()


def encodings(secret: str, user: str = "user@example.org") -> list[str]:
    """How a secret shows up in output that nobody meant to contain it."""
    raw = secret.encode()
    return [
        secret,
        quote(secret, safe=""), quote(secret), quote_plus(secret),
        repr(secret), repr(raw), json.dumps(secret), json.dumps(secret, ensure_ascii=False),
        '"' + secret.replace("\\", "\\\\").replace('"', '\\"') + '"',  # IMAP quoted string
        base64.b64encode(f"{user}:{secret}".encode()).decode(),  # HTTP Basic
        base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),  # AUTHENTICATE PLAIN
        base64.urlsafe_b64encode(f"x{secret}".encode()).decode(),
        json.dumps(repr(raw)),  # the bytes repr of a server reply, in a JSON log line
    ]


def leaks(text: str, secret: str, user: str = "user@example.org") -> list[str]:
    """The encodings of `secret` whose secret-derived core is still in `text`."""
    found = []
    for form in redaction.forms(secret):
        if form in text:
            found.append(form)
    return found


SECRETS = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=redaction.MIN_LENGTH,
    max_size=40).filter(lambda s: s.strip() == s and len(s.strip()) >= redaction.MIN_LENGTH)


@settings(max_examples=300, deadline=None)
@given(secret=SECRETS, prefix=st.text(max_size=20), suffix=st.text(max_size=20))
def test_every_encoding_of_a_secret_is_scrubbed(secret: str, prefix: str, suffix: str) -> None:
    redaction.forget_all()
    redaction.register(secret, "test")
    for encoded in encodings(secret):
        out = redaction.redact(f"{prefix}{encoded}{suffix}")
        assert secret not in out
        assert not leaks(out, secret), (encoded, out)


@pytest.mark.parametrize("secret", ["p@ss", "s3cr3t-Pa$$", "pässwört", 'a"b\\c d', "ключ-секрет", "🔑🔑🔑🔑"])
def test_examples_of_every_encoding(secret: str) -> None:
    redaction.register(secret, "test")
    for encoded in encodings(secret):
        out = redaction.redact(f"error: {encoded} (end)")
        assert "***" in out and not leaks(out, secret), (encoded, out)


def test_short_secrets_are_not_scrubbed_but_reported() -> None:
    redaction.register("ab", "secret file /x/short")
    redaction.register("long-enough", "secret file /x/long")
    assert redaction.redact("cab ab long-enough") == "cab ab ***"
    assert redaction.short_secrets() == ["secret file /x/short"]


def test_nothing_registered_changes_nothing() -> None:
    text = "a b c redis://:x@h"
    assert redaction.redact(text) is text
    assert redaction.redact_value({"a": [text]}) == {"a": [text]}


def test_values_of_every_shape_are_scrubbed() -> None:
    redaction.register("hunter22", "test")
    value = {"error": "bad hunter22", "counts": {"n": 1}, "list": ["x hunter22", ("hunter22", 3)],
             "hunter22": b"raw hunter22"}
    assert redaction.redact_value(value) == {"error": "bad ***", "counts": {"n": 1},
                                             "list": ["x ***", ("***", 3)], "***": "raw ***"}


def test_multi_line_secrets_are_scrubbed_line_by_line() -> None:
    body = base64.b64encode(bytes(range(96))).decode()
    pem = f"-----BEGIN PRIVATE KEY-----\n{body[:64]}\n{body[64:]}\n-----END PRIVATE KEY-----\n"
    redaction.register(pem, "key")
    assert redaction.redact(f"bad key line: {body[:64]}") == "bad key line: ***"
    assert "BEGIN" in redaction.redact("-----BEGIN PRIVATE KEY-----")


def test_secrets_of_a_model_are_registered_with_where_they_are() -> None:
    class Inner(BaseModel):
        key: SecretStr

    class Options(BaseModel):
        token: SecretStr
        nested: Inner
        many: list[Inner]
        plain: str = "not secret"

    redaction.register_model(Options(token="tok-abcdef", nested=Inner(key="k1"), many=[Inner(key="k2-long")]),
                             "c.yaml: options")
    assert redaction.redact("tok-abcdef k2-long not secret") == "*** *** not secret"
    assert redaction.short_secrets() == ["c.yaml: options.nested.key"]


# --------------------------------------------------------------------------- Redis URLs


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:secret@host", "redis://user:***@host"),
    ("redis://host:6379/0?password=secret", "redis://host:6379/0?password=***"),
    ("redis://host/0?db=1&password=secret&socket_timeout=5", "redis://host/0?db=1&password=***&socket_timeout=5"),
    ("redis://host/0?password=a@b.c", "redis://host/0?password=***"),
    ("redis://host?PASSWORD=ab#cd", "redis://host?PASSWORD=***"),
    ("redis://u:pa/ss?x#y@host:1/0", "redis://u:***@host:1/0"),
    ("rediss://kmrl-sync@redis.kmrl.internal:6380/0", "rediss://kmrl-sync@redis.kmrl.internal:6380/0"),
    ("unix:///run/redis.sock?password=secret&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ("embedded", "embedded"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


PASSWORDS = st.text(alphabet=string.printable.strip(), min_size=1, max_size=30)


@settings(max_examples=500, deadline=None)
@given(password=PASSWORDS, user=st.sampled_from(["", "kmrl", "kmrl-sync"]),
       tail=st.sampled_from(["", "/0", ":6380", ":6380/2", "/0?db=1"]))
def test_a_userinfo_password_is_never_shown(password: str, user: str, tail: str) -> None:
    """Unencoded `@`, `/`, `?`, `#`, `:` included: redis-py's parse and ours may differ; ours masks."""
    url = f"redis://{user}:{password}@redis.example.org{tail}"
    assert mask_url(url) == f"redis://{user}:***@redis.example.org{tail}"


@settings(max_examples=500, deadline=None)
@given(password=PASSWORDS.filter(lambda p: "&" not in p and "#" not in p),
       before=st.sampled_from(["", "db=1&"]), after=st.sampled_from(["", "&db=2"]))
def test_a_query_password_is_never_shown(password: str, before: str, after: str) -> None:
    url = f"redis://redis.example.org:6379/0?{before}password={password}{after}"
    assert mask_url(url) == f"redis://redis.example.org:6379/0?{before}password=***{after}"


@settings(max_examples=300, deadline=None)
@given(password=PASSWORDS.filter(lambda p: len(p) >= redaction.MIN_LENGTH),
       form=st.sampled_from(["redis://:{}@h:6379/0", "redis://u:{}@h", "redis://h/0?password={}",
                             "redis://h/0?db=1&password={}"]))
def test_what_redis_py_reads_as_the_password_is_registered(password: str, form: str) -> None:
    """Whatever redis-py makes of a URL (it cuts at `#` and `&`, decodes `%xx`), that is scrubbed."""
    from redis.connection import parse_url

    redaction.forget_all()
    url = form.format(password)
    try:
        read = parse_url(url).get("password")
    except ValueError:
        return  # redis-py refuses the URL: it never becomes a password
    redaction.register_url(url, "redis.url")
    if read and len(read) >= redaction.MIN_LENGTH:
        assert read not in redaction.redact(f"AUTH {read}")


# --------------------------------------------------------------------------- streams


def test_a_stream_passes_lines_on_scrubbed_even_when_written_in_pieces() -> None:
    redaction.register("hunter22", "test")
    out = io.StringIO()
    stream = redaction.RedactingStream(out)
    stream.write("password hun")
    stream.write("ter22 and more")
    assert out.getvalue() == ""
    stream.write("\nnext hunter22")
    assert out.getvalue() == "password *** and more\n"
    stream.flush()
    assert out.getvalue() == "password *** and more\nnext ***"
    assert stream.isatty() is False  # everything else is the wrapped stream's
