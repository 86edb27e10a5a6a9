"""Header decoding and MIME parsing never raise, and read what can be read."""

# ruff: noqa: RUF001

from __future__ import annotations

import email.utils
import json
from email import policy
from email.message import Message
from email.parser import BytesParser

import pytest

from kmrl_sync.connectors.imap import parse as parse_module
from kmrl_sync.connectors.imap.mime import parse_bytes
from kmrl_sync.connectors.imap.parse import clean_text, parse_mail, sanitise_filename
from tests.support.mailcorpus import malformed_mails, realistic_mail, realistic_mailbox

MALFORMED = dict(malformed_mails())


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_mail_is_parsed_without_raising(name: str) -> None:
    parsed = parse_mail(MALFORMED[name])
    json.dumps([parsed.subject, parsed.sender, parsed.to, parsed.cc, parsed.body])  # valid text
    for text in (parsed.subject, parsed.sender, parsed.body, *parsed.to, *parsed.cc):
        text.encode("utf-8")  # no lone surrogates reach Redis
        assert "\x00" not in text


def test_headers_decoded() -> None:
    assert parse_mail(MALFORMED["raw_8bit_latin1_headers"]).subject == "Grüße à tous, £100"
    utf8 = parse_mail(MALFORMED["raw_8bit_utf8_headers"])
    assert utf8.subject == "Grüße 🚀 会议 – no encoded-words" and utf8.body.startswith("Ünïcödé")
    assert parse_mail(MALFORMED["unknown_charset"]).body.startswith("Café")
    broken = parse_mail(MALFORMED["broken_encoded_words"]).subject
    assert broken.startswith("Hello Wor")
    assert parse_mail(MALFORMED["missing_date"]).date == ""
    assert parse_mail(MALFORMED["garbage_date"]).date == ""
    assert parse_mail(realistic_mail(0)).date.endswith("Z")


def test_commas_in_display_names_do_not_split_addresses() -> None:
    parsed = parse_mail(MALFORMED["comma_display_names"])
    assert parsed.sender == '"Doe, John" <john.doe@example.com>'
    assert parsed.to == ['"Smith, Jane" <jane@example.com>', '"O\'Brien, Pat (HR)" <pat@example.com>',
                         "Plain Name <plain@example.com>"]
    assert parsed.cc == ['"Müller, Hans" <hans@example.de>', '"a,b,c" <abc@example.com>']


def test_encoded_comma_in_unquoted_name() -> None:
    raw = b"From: =?utf-8?Q?Doe=2C_John?= <jd@example.org>, x@y.org\r\nSubject: s\r\n\r\nb\r\n"
    assert parse_mail(raw).sender == '"Doe, John" <jd@example.org>'


def test_html_only_body_becomes_text_and_scripts_vanish() -> None:
    body = parse_mail(MALFORMED["html_only"]).body
    assert "Nur" in body and "HTML" in body and "<p>" not in body and "alert" not in body


def test_attachments_and_nested_message() -> None:
    nested = parse_mail(MALFORMED["nested_rfc822"])
    assert [(a.filename, a.mime_type) for a in nested.attachments] == [("fwd.eml", "message/rfc822")]
    assert nested.attachments[0].data.startswith(b"From: Sender")  # the forwarded mail, whole
    evil = parse_mail(MALFORMED["attachment_path_traversal"])
    assert [a.filename for a in evil.attachments] == ["passwd", "x.exe", "hidden"]
    rfc2231 = parse_mail(MALFORMED["rfc2231_filenames"])
    assert rfc2231.attachments[0].filename == "€ Rechnung für März.pdf"
    assert all("/" not in a.filename and ".." not in a.filename for a in rfc2231.attachments)
    broken = parse_mail(MALFORMED["invalid_base64_attachment"])
    assert broken.attachments and broken.attachments[0].filename == "broken.pdf"


def test_oversize_attachment_reported_not_kept() -> None:
    raw = realistic_mail(3, attachments=True)
    parsed = parse_mail(raw, max_attachment_bytes=1000)
    assert parsed.attachments and all(a.data is None and "max_attachment_mb" in a.error
                                      for a in parsed.attachments)
    off = parse_mail(raw, attachments=False)
    assert off.attachments and all(a.data is None for a in off.attachments)


def test_attachments_off_lists_them_without_decoding(monkeypatch) -> None:
    from kmrl_sync.connectors.imap import parse

    raw = realistic_mail(3, attachments=True)
    on = parse_mail(raw)
    monkeypatch.setattr(parse, "_attachment_bytes", lambda part: pytest.fail("decoded with attachments off"))
    off = parse_mail(raw, attachments=False)
    assert [(a.index, a.filename, a.mime_type) for a in off.attachments] == \
        [(a.index, a.filename, a.mime_type) for a in on.attachments]
    assert (off.subject, off.body) == (on.subject, on.body)


def test_zero_length_and_boundaryless_bodies() -> None:
    assert parse_mail(MALFORMED["zero_length_body"]).body == ""
    assert "text" in parse_mail(MALFORMED["multipart_missing_boundary"]).body
    assert parse_mail(MALFORMED["multipart_missing_terminator"]).body.startswith("part one")
    assert parse_mail(b"").subject == ""


@pytest.mark.parametrize("name, expected", [
    ("../../etc/passwd", "passwd"), ("C:\\evil\\x.exe", "x.exe"), ("/abs/.hidden", "hidden"),
    ("", "attachment-3.pdf"), ("a\x00b\nc.txt", "ab_c.txt"), ("x" * 300 + ".pdf", "x" * 140 + ".pdf"),
    ("what?.txt", "what_.txt"),
])
def test_sanitise_filename(name: str, expected: str) -> None:
    assert sanitise_filename(name, 3, "application/pdf") == expected


def test_clean_text_repairs_surrogates_and_controls() -> None:
    latin1 = b"Gr\xfc\xdfe".decode("ascii", "surrogateescape")
    assert clean_text(latin1) == "Grüße"
    assert clean_text("a\x00b\x07c\td") == "abc\td"


CORPUS = [*MALFORMED.items(), *((f"realistic-{i}", m) for i, m in enumerate(realistic_mailbox(60, 0.4)))]


@pytest.mark.parametrize("name", [n for n, _ in CORPUS])
def test_fast_mime_splitter_reads_what_the_stdlib_parser_reads(name: str, monkeypatch) -> None:
    """Same subject, addresses, body and attachments as with the stdlib parser (known exceptions)."""
    raw = dict(CORPUS)[name]

    def summary() -> tuple:
        p = parse_mail(raw)
        return p.subject, p.sender, p.to, p.cc, p.date, p.body, [(a.filename, a.mime_type, a.data)
                                                                 for a in p.attachments]

    fast = summary()
    monkeypatch.setattr(parse_module, "parse_bytes", BytesParser(policy=policy.compat32).parsebytes)
    stdlib = summary()
    if name == "nested_rfc822":  # the fast path keeps the forwarded mail's original bytes
        assert fast[:6] == stdlib[:6]
    elif name == "header_without_colon":  # the fast path keeps the body apart from the junk line
        assert fast[5] == "Body.\r\n"
    else:
        assert fast == stdlib


def test_splitter_tree_shape() -> None:
    tree = parse_bytes(realistic_mail(2, attachments=True))
    assert tree.get_content_type() == "multipart/mixed"
    assert tree.get_payload()[0].get_content_type() in ("text/plain", "multipart/alternative")


def _old_clean_text(value: str, limit: int | None = None) -> str:
    """clean_text as it was before its fast path (regex scans), the reference for its results."""
    import re

    if value.isascii() and value.isprintable():
        return value if limit is None else value[:limit]
    if re.search("[\udc80-\udcff]", value):
        data = value.encode("utf-8", "surrogateescape")
        try:
            value = data.decode("utf-8")
        except UnicodeDecodeError:
            value = data.decode("cp1252", "replace") if parse_module._cp1252_ok(data) else data.decode("latin-1")
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", value)
    return value[:limit] if limit is not None else value


CLEAN_TEXT_CASES = [
    "", "plain", "line one\r\nline two\n\ttab", "ctrl\x00\x01\x08\x0b\x0c\x0e\x1f\x7f end",
    "Grüße – 会议 🚀\r\n", "NBSP\xa0and\u2028separator\x85", "mixed \x07 bell and ü",
    b"Gr\xfc\xdfe \x00\r\n".decode("ascii", "surrogateescape"),  # Latin-1 bytes
    b"\xc3\xbc utf-8 bytes\x1b".decode("ascii", "surrogateescape"),
    b"\x81\x8d\x8f undefined in cp1252".decode("ascii", "surrogateescape"),
    "lone \ud800 surrogate\x00", "x" * 50 + "\x00" + "ü" * 50,
]


@pytest.mark.parametrize("value", CLEAN_TEXT_CASES)
@pytest.mark.parametrize("limit", [None, 5, 1000])
def test_clean_text_same_as_regex_version(value: str, limit: int | None) -> None:
    assert clean_text(value, limit) == _old_clean_text(value, limit)


def test_clean_text_survives_mixed_surrogates() -> None:
    """Escaped 8-bit bytes next to another lone surrogate: the old version raised here."""
    assert clean_text("a\udcfc\ud800b") == "a??b"


def _base64_part(body: bytes, cte: str = "base64") -> Message:
    part = Message()
    part["Content-Type"] = "application/octet-stream"
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(body.decode("ascii", "surrogateescape"))
    return part


BASE64_BODIES = [
    b"", b"QUJD", b"QUJDRA==", b"QUJDREU=", b"QUJDREVG\r\nR0g=\r\n", b"QUJD\nREVG\n",
    b"QUJDRA", b"QUJDREU", b"QUJDR", b"QUJD=", b"QUJDRA==QUJD", b"=QUJD",  # padding trouble
    b"QU JD\tRA==", b"QUJ!DRA==", b"QUJD*&^%RA==", b"JVBERi0xLj!!!QK*&^%$#@ not base64 at all ====",
    b"Q\xffUJD", b"Q\xe9UJDRA==",  # 8-bit bytes
    b"QUJD\rREVG\r",  # bare CR line breaks
]


@pytest.mark.parametrize("body", BASE64_BODIES)
@pytest.mark.parametrize("cte", ["base64", "BASE64", "base64 ", "quoted-printable", "7bit"])
def test_decoded_payload_same_as_stdlib(body: bytes, cte: str) -> None:
    assert parse_module.decoded_payload(_base64_part(body, cte)) == _base64_part(body, cte).get_payload(decode=True)


def test_b64decode_gives_what_the_stdlib_gives() -> None:
    """The fast decoder is taken only where it agrees with `a2b_base64`: same bytes or same error,
    on random mixes of the alphabet, padding in any place, line breaks and junk."""
    import binascii
    import random

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = "=\r\n \t-_.!*\x00\x7f~"
    rnd = random.Random(20261127)

    def outcome(decode, text: str) -> tuple[str, bytes | str]:
        try:
            return "ok", decode(text)
        except binascii.Error:
            return "error", ""

    for _ in range(40_000):
        share = rnd.choice([0.7, 0.9, 0.97, 1.0])
        text = "".join(rnd.choice(alphabet if rnd.random() < share else other) for _ in range(rnd.randint(0, 30)))
        if rnd.random() < 0.3:
            text += "=" * rnd.randint(1, 3) + rnd.choice(["", "\r\n", "\n", " "])
        assert outcome(parse_module.b64decode, text) == outcome(binascii.a2b_base64, text), repr(text)


def test_b64decode_stops_at_padding_as_the_stdlib_does() -> None:
    # pybase64 alone: "Incorrect padding" and b"ABCABC"
    assert parse_module.b64decode("QUJDRA==QUJD") == b"ABCD"
    assert parse_module.b64decode("QUJ=DQUJD") == b"AB"
    assert parse_module.b64decode("QUJDRA==\r\n") == b"ABCD"


def test_decoded_payload_of_attachments() -> None:
    import base64
    import os

    for size in (0, 1, 2, 3, 57, 58, 100_000, 100_001, 100_002):
        data = os.urandom(size)
        for body in (base64.encodebytes(data), base64.encodebytes(data).replace(b"\n", b"\r\n"),
                     base64.b64encode(data)):
            part = _base64_part(body)
            assert parse_module.decoded_payload(part) == part.get_payload(decode=True) == data
    corrupt = _base64_part(base64.encodebytes(os.urandom(3000))[:-3])  # truncated: stdlib repairs it
    assert parse_module.decoded_payload(corrupt) == corrupt.get_payload(decode=True)
    multipart = Message()
    multipart.set_payload([_base64_part(b"QUJD")])
    assert parse_module.decoded_payload(multipart) is None


DATES = [
    "Mon, 04 Mar 2024 10:00:00 +0100", "4 Mar 2024 10:00:00 -0500", "Tue, 5 mar 2024 23:59:59 +0000",
    "Fri, 01 Jan 2021 00:30:00 +0100", "Sun, 31 Dec 2023 23:30:00 -0130", "Xyz, 04 Mar 2024 10:00:00 +0100",
    "Mon, 04 Mar 2024 10:00:00 -0000", "Mon, 04 Mar 2024 10:00:00 +0175", "Mon, 04 Mar 2024 10:00:00 +2359",
    "Mon, 04 Mar 2024 10:00:00 +2400", "Mon, 04 Mar 2024 10:00:00 +9999", "Mon, 30 Feb 2024 10:00:00 +0100",
    "Mon, 04 Mar 2024 24:00:00 +0100", "Mon, 04 Mar 2024 10:00:60 +0100", "Mon, 04 Mar 2024 10:00:00 +0100 (CET)",
    "Mon, 04 Mar 2024 10:00:00 +0100\t(CET) extra", "Mon, 04 Mar 2024 10:00:00 +0100x",
    "Mon, 04 Xyz 2024 10:00:00 +0100", "Mon, 01 Jan 1000 00:30:00 +0100", "Fri, 31 Dec 9999 23:30:00 -0100",
    "Mon, 04 Mar 0099 10:00:00 +0100",
    "Mon,04 Mar 2024 10:00:00 +0100", "Mon 04 Mar 2024 10:00:00 +0100", "Mon, 04 Mar 2024 10:00 +0100",
    "Mon, 04 Mar 24 10:00:00 +0100", "Mon, 04 Mar 2024 10:00:00 GMT", "Mon, 04 Mar 2024 10:00:00",
    "  Mon, 04 Mar 2024 10:00:00 +0100  ", "Mon, ٠٤ Mar 2024 10:00:00 +0100", "sometime last tuesday",
]


@pytest.mark.parametrize("text", DATES)
def test_mail_date_same_as_email_utils(text: str) -> None:
    def stdlib() -> str:
        try:
            return parse_module.iso_utc(email.utils.parsedate_to_datetime(text))
        except Exception:
            return ""

    msg = Message()
    msg["Date"] = text
    assert parse_module.mail_date(msg) == stdlib()


CONTENT_TYPES = [
    None, "", "text/plain", "text/plain; charset=utf-8", "text/plain; charset=\"UTF-8\"",
    "TEXT/HTML;CHARSET=Latin1", "text/plain ;  charset = iso-8859-1 ", "text/plain;\r\n charset=utf-8",
    "text/plain;\r\n\tcharset=\"utf-8\"\r\n", "text/plain; charset=\"utf-8", "text/plain; charset=utf-8\"",
    "text/plain; charset=\"\"", "text/plain; charset=", "text/plain; charset=utf-8; format=flowed",
    "text/plain; format=flowed; charset=utf-8", "text/plain; charset=a; charset=b",
    "text/plain; charset*=utf-8''%75tf-8", "text/plain; charset*0=utf; charset*1=-8",
    "text/plain; charset=\"a\\\"b\"", "text/plain; charset=x-unknown-foo", "text/plain; charset=utf-8 (comment)",
    "text/plain; Charset=UTF-8", "text/plain; xcharset=utf-8", "text/plain; charset=ütf-8",
    b"text/plain; charset=\xe9".decode("ascii", "surrogateescape"), "text/plain; charset=utf-8\x0b",
    "application/pdf; name=\"report.pdf\"", "application/pdf; NAME=report.pdf",
    "application/pdf; name*=utf-8''r%C3%A9.pdf", "application/pdf; name*0=\"re\"; name*1=\"port.pdf\"",
    "application/pdf; filename=x.pdf", "application/pdf; nam=x", "application/pdf; x=\"a;name=b\"",
    "application/pdf; name=\"=?utf-8?q?R=C3=A9sum=C3=A9.pdf?=\"",
]
DISPOSITIONS = [None, "inline", "attachment", "attachment; filename=\"a.pdf\"",
                "attachment; FILENAME*=utf-8''%C3%A9.txt"]


@pytest.mark.parametrize("ctype", CONTENT_TYPES)
@pytest.mark.parametrize("disposition", DISPOSITIONS)
def test_charset_disposition_and_filename_shortcuts_same_as_stdlib(ctype: str | None, disposition: str | None) -> None:
    def part() -> Message:
        msg = Message()
        if ctype is not None:
            msg.set_raw("Content-Type", ctype)
        if disposition is not None:
            msg.set_raw("Content-Disposition", disposition)
        return msg

    assert parse_module._content_charset(part()) == part().get_content_charset()
    assert parse_module._disposition(part()) == part().get_content_disposition()
    try:
        name = part().get_filename()
    except Exception:
        name = None
    if name is None:
        name = part().get_param("name")
        if isinstance(name, tuple):
            name = email.utils.collapse_rfc2231_value(name)
    assert parse_module._filename(part()) == (parse_module._decode_words(str(name)) if name else "")
