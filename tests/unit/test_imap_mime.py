"""The fast header-block reader builds exactly the Message the stdlib header parser builds."""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser

import pytest

from kmrl_sync.connectors.imap import mime
from tests.support.mailcorpus import dovecot_roundtrip, malformed_mails, realistic_mail, realistic_mailbox

STDLIB = BytesHeaderParser(policy=policy.compat32)


def _header_blocks(raw: bytes, start: int = 0, end: int | None = None, depth: int = 0) -> list[bytes]:
    """The header block of a mail and of each of its MIME parts, cut as `mime._build` cuts them."""
    end = len(raw) if end is None else end
    header_end, body_start = mime._split_headers(raw, start, end)
    header = raw[start:header_end]
    blocks = [header] if header else []
    boundary = STDLIB.parsebytes(header).get_boundary()
    if boundary and depth < 5:
        try:
            parts = mime._parts(raw, body_start, end, boundary.encode("ascii", "surrogateescape"))
        except mime._Fallback:
            parts = []
        for part_start, part_end in parts:
            blocks += _header_blocks(raw, part_start, part_end, depth + 1)
    return blocks


def _line_ending_variants(raw: bytes) -> list[bytes]:
    lf = raw.replace(b"\r\n", b"\n")
    return [raw, dovecot_roundtrip(raw), lf, lf.replace(b"\n", b"\r"), lf.replace(b"\n", b"\r\n", 3)]


CORPUS_BLOCKS = sorted({
    block
    for raw in [*realistic_mailbox(40, 0.4), *(m for _, m in malformed_mails())]
    for variant in _line_ending_variants(raw)
    for block in _header_blocks(variant)
})

FAST_BLOCKS = [  # read by the fast path
    b"Subject: folded\r\n  across\r\n\tthree lines\r\n",
    b"Subject:\r\n continuation only\r\n",
    b"Subject: \t \r\n \r\nX: y\r\n",  # blank first line, blank continuation line
    b"Subject: trailing blanks   \r\nX:\r\n",  # empty value
    b"X-Empty:\r\nY:    \r\nZ: z\r\n",
    b"Received: a\r\nReceived: b\r\nreceived: c\r\n",  # duplicates, any case
    b"Subject: lf only\n folded\nTo: x@y\n",
    b"Subject: caf\xe9 \xff\r\nFrom: J\xfcrgen <j@x>\r\n",  # 8-bit values
    b"Subject: form\x0bfeed\x0c and \x1c separators\r\nTo: t\r\n",  # not line breaks
    b"Subject: a:b:c\r\nX-Colon::\r\n",
    b"Content-Type: multipart/mixed;\r\n boundary=\"b1\"; charset=utf-8\r\n",
    b"Content-Type: text/plain; name=\"=?utf-8?q?R=C3=A9sum=C3=A9.pdf?=\"\r\n"
    b"Content-Disposition: attachment;\r\n filename*0*=utf-8''R%C3%A9;\r\n filename*1=sum.pdf\r\n",
    b"Content-Type: text/plain\r\nContent-Type: text/html\r\n",
    b"Subject: " + b"long " * 20000 + b"\r\n",
    b"A:\r\n",
]
FALLBACK_BLOCKS = [  # left to the stdlib parser
    b"Subject: cr only\r folded\rTo: x@y\r",
    b"Subject: mixed\r\nTo: x@y\n",
    b"X-\xe9: 8-bit name\r\nSubject: s\r\n",
    b"From sender@example.org Mon Mar  4 10:00:00 2024\r\nSubject: mbox\r\n",
    b"Subject: s\r\nFrom sender@example.org Mon Mar  4\r\nTo: t\r\n",
    b" leading continuation\r\nSubject: s\r\n",
    b"Subject: s\r\nnot a header line\r\nTo: t\r\n",
    b"Subject : space before colon\r\n",
    b": no name\r\nSubject: s\r\n",
    b"Subject: no final line break",
    b"Subject: s\r\n\r\nTo: after an empty line\r\n",
    b"Subject: s\r\r\nTo: t\r\n",
    b"Subject: s\r\n\tfolded\rTo: t\r\n",
    b"\r\n",
    b"\n",
]


def _same_message(fast: Message, stdlib: Message) -> None:
    assert [type(d) for d in fast.defects] == [type(d) for d in stdlib.defects]
    assert {**vars(fast), "defects": None} == {**vars(stdlib), "defects": None}
    assert list(fast.raw_items()) == list(stdlib.raw_items())
    assert fast.items() == stdlib.items()
    assert fast.get_content_type() == stdlib.get_content_type()
    assert fast.get_params() == stdlib.get_params()
    assert fast.get_filename() == stdlib.get_filename()
    assert fast.get_boundary() == stdlib.get_boundary()
    assert fast.get_content_charset() == stdlib.get_content_charset()
    assert fast.get_payload() == stdlib.get_payload()


@pytest.mark.parametrize("block", CORPUS_BLOCKS + FAST_BLOCKS + FALLBACK_BLOCKS)
def test_fast_header_block_matches_stdlib(block: bytes) -> None:
    _same_message(mime._fast_headers(block), STDLIB.parsebytes(block))


def test_corpus_covers_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real mails (CRLF or LF) and FAST_BLOCKS take the fast path, FALLBACK_BLOCKS the stdlib's."""
    fallbacks: list[bytes] = []

    def stdlib(block: bytes) -> Message:
        fallbacks.append(block)
        return STDLIB.parsebytes(block)

    monkeypatch.setattr(mime._HEADERS, "parsebytes", stdlib)
    for i in range(8):
        raw = realistic_mail(i, attachments=i % 2 == 0)
        for block in _header_blocks(raw) + _header_blocks(raw.replace(b"\r\n", b"\n")):
            mime._fast_headers(block)
    for block in FAST_BLOCKS:
        mime._fast_headers(block)
    assert fallbacks == []
    for block in FALLBACK_BLOCKS:
        mime._fast_headers(block)
    assert fallbacks == FALLBACK_BLOCKS


@pytest.mark.parametrize("raw", [realistic_mail(i, attachments=True) for i in range(4)]
                         + [m for _, m in malformed_mails()])
def test_whole_tree_matches_stdlib_header_parser(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part of the tree has the headers and defects the stdlib header parser gives it."""
    fast = mime.parse_bytes(raw)
    monkeypatch.setattr(mime, "_fast_headers", STDLIB.parsebytes)
    stdlib = mime.parse_bytes(raw)
    fast_parts, stdlib_parts = list(fast.walk()), list(stdlib.walk())
    assert len(fast_parts) == len(stdlib_parts)
    for a, b in zip(fast_parts, stdlib_parts, strict=True):
        assert list(a.raw_items()) == list(b.raw_items())
        assert [type(d) for d in a.defects] == [type(d) for d in b.defects]
        if not a.is_multipart():
            assert a.get_payload() == b.get_payload()


def _headers_and_leaves(msg: Message) -> list[tuple[list[tuple[str, str]], object]]:
    return [(list(part.raw_items()), None if part.is_multipart() else part.get_payload()) for part in msg.walk()]


@pytest.mark.parametrize("i", range(12))
def test_part_boundaries_match_stdlib_parser(i: int) -> None:
    """Every part's headers and undecoded payload are the ones the stdlib parser cuts out."""
    full = BytesParser(policy=policy.compat32)
    raw = realistic_mail(i, attachments=i % 3 != 0)
    for variant in (raw, raw.replace(b"\r\n", b"\n"), raw + b"epilogue\r\n", b"\r\n" + raw):
        assert _headers_and_leaves(mime.parse_bytes(variant)) == _headers_and_leaves(full.parsebytes(variant))
