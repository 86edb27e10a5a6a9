"""A fast MIME splitter producing the same `email.message.Message` trees as the stdlib parser.

Why: the stdlib FeedParser walks every line of every part through Python code (five million
`readline` calls for the 10,000-mail benchmark) and dominated the sync's CPU time. Here only header
blocks are parsed line by line; bodies are cut on their boundary lines with `bytes.find` and
attached as undecoded payloads, exactly as the stdlib parser would have stored them, so
`get_payload(decode=True)`, `get_filename()` and friends work unchanged. Anything this splitter
does not handle with certainty (no boundary parameter, no boundary line, an exception) falls back
to the stdlib parser for that message.

Header blocks themselves are read by `_fast_headers` when they are plain `Name: value` lines
(the overwhelming case): one regular expression checks the whole block and another extracts the
fields, instead of the FeedParser's per-line generator, regex and policy calls (40% of the time
of mail parsing, and 3x slower). Anything unusual still goes to the stdlib header parser.
"""

from __future__ import annotations

import re
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser

_HEADERS = BytesHeaderParser(policy=policy.compat32)
_FULL = BytesParser(policy=policy.compat32)
MAX_DEPTH = 20


def _field_patterns(nl: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """(whole block, one field) for a header block whose every line ends in `nl`.

    A field as the FeedParser reads it (feedparser.headerRE, FeedParser._parse_headers and
    Compat32.header_source_parse): a name of printable ASCII other than ':' (headerRE's ftext),
    ':', blanks (dropped), the value up to the line break, then any continuation lines (a line
    break followed by a space or tab, kept verbatim in the value), then the line break that ends
    the field (dropped: header_source_parse strips trailing CR/LF). With one kind
    of line break only, "up to the line break" is "up to the next CR" (or LF): a single-character
    scan in the regex engine, 3x faster than a class of both.
    """
    end = nl[0]
    field = rf"([\041-\071\073-\176]+):[ \t]*([^{end}]*(?:{nl}[ \t][^{end}]*)*){nl}"
    return re.compile(rf"(?:{field})+"), re.compile(field)


_CRLF_FIELDS = _field_patterns("\r\n")
_LF_FIELDS = _field_patterns("\n")


class _Fallback(Exception):
    pass


def _split_headers(data: bytes, start: int, end: int) -> tuple[int, int]:
    """(end of the header block including its final newline, start of the body) in data[start:end].

    Both are `end` when there is no blank line. Offsets rather than slices throughout this module:
    the body of a 200 KB attachment used to be copied three times on its way to its payload
    (mail body, part, part body), each copy of fresh memory costing as much as the decode.
    """
    if data.startswith(b"\r\n", start, end):  # no headers at all
        return start, start + 2
    if data.startswith(b"\n", start, end):
        return start, start + 1
    best, sep_len = data.find(b"\r\n\r\n", start, end), 4
    # a bare-LF blank line earlier than the first CRLF one wins (only search up to it: the body
    # of a CRLF mail is large and has no LF-only blank line to find)
    lf = data.find(b"\n\n", start, best + 2 if best != -1 else end)
    if lf != -1 and (best == -1 or lf < best):
        best, sep_len = lf, 2
    if best == -1:
        return end, end
    return best + sep_len // 2, best + sep_len


def _fast_headers(header_bytes: bytes) -> Message:
    """What `BytesHeaderParser(policy=compat32).parsebytes(header_bytes)` returns, read faster.

    Only for a block that is nothing but well-formed fields, each ending in the same kind of line
    break (CRLF, or LF); the stdlib parser handles everything else (bare CRs or mixed line breaks,
    an mbox `From ` line, a line without a colon or with a blank or 8-bit byte in its name, a
    leading continuation line, an empty line inside the block, no final line break), with the
    defects it records for them. For a well-formed block the stdlib records no defects and leaves
    an empty payload, as here.
    """
    text = header_bytes.decode("ascii", "surrogateescape")
    if text.count("\r\n") == text.count("\n") == text.count("\r"):  # CRLF only (what IMAP servers send)
        block, field = _CRLF_FIELDS
    elif "\r" not in text:
        block, field = _LF_FIELDS
    else:
        return _HEADERS.parsebytes(header_bytes)
    if not block.fullmatch(text):
        return _HEADERS.parsebytes(header_bytes)
    msg = Message(policy=policy.compat32)
    for name, value in field.findall(text):
        msg.set_raw(name, value)
    msg.set_payload("")
    return msg


def _parts(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of the encapsulated parts between `--boundary` lines of data[start:end]
    (RFC 2046 5.1.1); raise _Fallback if there is no boundary line."""
    delim = b"--" + boundary
    starts: list[tuple[int, int, bool]] = []  # (line start, content start, is close delimiter)
    pos = start
    while True:
        at = data.find(delim, pos, end)
        if at == -1:
            break
        pos = at + len(delim)
        if at != start and data[at - 1] != 0x0A:
            continue  # not at the start of a line
        end_of_line = data.find(b"\n", pos, end)
        rest = data[pos:end] if end_of_line == -1 else data[pos:end_of_line]
        closing = rest.startswith(b"--")
        tail = rest[2:] if closing else rest
        if tail.strip(b" \t\r"):
            continue  # `--boundaryX`: a longer boundary, not ours
        starts.append((at, end if end_of_line == -1 else end_of_line + 1, closing))
        if closing:
            break
    if not starts:
        raise _Fallback("no boundary line")
    parts: list[tuple[int, int]] = []
    for (_line, content, closing), following in zip(starts, [*starts[1:], None], strict=True):
        if closing:
            break
        if following is None:
            parts.append((content, end))  # no close delimiter: the part runs to the end
            break
        part_end = following[0]
        # the CRLF (or LF) before a delimiter belongs to the delimiter
        if data[part_end - 2:part_end] == b"\r\n":
            part_end -= 2
        elif data[part_end - 1:part_end] == b"\n":
            part_end -= 1
        parts.append((content, max(part_end, content)))
    return parts


def _build(data: bytes, start: int, end: int, depth: int) -> Message:
    """The message in data[start:end]."""
    header_end, body_start = _split_headers(data, start, end)
    msg = _fast_headers(data[start:header_end]) if header_end > start else Message()
    ctype = msg.get_content_type()
    if ctype.startswith("multipart/") and depth < MAX_DEPTH:  # get_content_maintype() == multipart
        boundary = msg.get_boundary()
        if not boundary:
            raise _Fallback("multipart without boundary")
        parts = _parts(data, body_start, end, boundary.encode("ascii", "surrogateescape"))
        msg.set_payload([_build(data, part_start, part_end, depth + 1) for part_start, part_end in parts])
        return msg
    # decoded straight from the buffer: no intermediate copy of the body
    msg.set_payload(str(memoryview(data)[body_start:end], "ascii", "surrogateescape"))
    return msg


def parse_bytes(raw: bytes) -> Message:
    """The message tree; the stdlib parser's result whenever the fast path is not certain."""
    try:
        return _build(raw, 0, len(raw), 0)
    except Exception:
        return _FULL.parsebytes(raw)
