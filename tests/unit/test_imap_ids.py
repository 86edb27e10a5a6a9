"""Document identity of a mail: normalised Message-ID, else a stable hash of the raw headers."""

from __future__ import annotations

from kmrl_sync.connectors.imap.ids import header_block, header_hash_id, message_id_of, normalise_message_id


def test_normalise_message_id() -> None:
    assert normalise_message_id("<Abc.123@Example.ORG>") == "Abc.123@example.org"
    assert normalise_message_id("  <abc@x.org> (comment)") == "abc@x.org"
    assert normalise_message_id("abc@x.org") == "abc@x.org"
    assert normalise_message_id("<abc@\r\n x.org>") == "abc@x.org"
    assert normalise_message_id("<>") is None and normalise_message_id("   ") is None
    long = normalise_message_id("<" + "a" * 500 + "@x.org>")
    assert long is not None and long.startswith("mid-") and len(long) < 100


def test_message_id_from_raw_bytes() -> None:
    raw = b"From: a@b\r\nMessage-Id:\r\n <Folded@Example.com>\r\nSubject: x\r\n\r\nMessage-ID: <body@x>\r\n"
    assert message_id_of(raw) == "Folded@example.com"
    assert message_id_of(b"Subject: none\r\n\r\nMessage-ID: <in-body@x>\r\n") is None
    assert message_id_of(b"Message-ID: <lf@x.org>\nSubject: y\n\nbody") == "lf@x.org"


def test_header_hash_is_stable_across_line_endings_and_ignores_the_body() -> None:
    crlf = b"From: a@b\r\nSubject: s\r\n\r\nbody one\r\n"
    lf = b"From: a@b\nSubject: s\n\nbody two\n"
    assert header_block(crlf) == b"From: a@b\r\nSubject: s\r\n"
    assert header_hash_id(crlf) == header_hash_id(lf)
    assert header_hash_id(crlf) != header_hash_id(b"From: a@b\r\nSubject: t\r\n\r\nbody one\r\n")
    assert header_hash_id(b"From: only headers\r\n").startswith("hdr-")
