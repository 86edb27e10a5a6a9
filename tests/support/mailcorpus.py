"""Deterministic corpora of raw RFC 822 mails for tests and benchmarks.

Why hand-built bytes instead of ``email.message`` objects: the sync engine
must store what the server returns *byte for byte*, including mails that
Python's ``email`` package would repair, re-fold or refuse.  So every mail
here is assembled from literal byte strings with CRLF line endings (as IMAP
transmits them), except where the malformation *is* the line ending.

Everything is a pure function of its arguments (``random.Random(seed)``), so a
failing test or a benchmark can be reproduced exactly.
"""

# The corpus is deliberately multilingual (en dash, Cyrillic, CJK punctuation):
# ruff: noqa: RUF001
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
import zlib
from collections.abc import Iterator

__all__ = [
    "CRLF",
    "dovecot_roundtrip",
    "malformed_mails",
    "realistic_mail",
    "realistic_mailbox",
]

CRLF = b"\r\n"

_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "that", "on", "with", "as", "it", "by", "this", "be",
    "are", "from", "at", "or", "an", "have", "not", "was", "we", "will", "can", "but", "all", "your",
    "our", "their", "more", "new", "one", "about", "which", "they", "has", "if", "would", "there",
    "been", "other", "when", "what", "so", "some", "its", "into", "than", "then", "these", "only",
    "project", "meeting", "report", "budget", "review", "release", "server", "client", "update",
    "deadline", "team", "customer", "invoice", "schedule", "design", "draft", "please", "thanks",
    "regards", "attached", "agenda", "quarter", "results", "network", "storage", "database",
    "migration", "backup", "issue", "ticket", "fix", "test", "build", "deploy", "feedback", "proposal",
    "contract", "approval", "travel", "office", "holiday", "payment", "sync", "mailbox", "folder",
    "message", "delivery", "performance", "latency", "throughput"
)
_FIRST = (
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Niaj",
    "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Zoë", "José", "Ängela", "Søren",
    "Łukasz", "Ми́ла", "美咲"
)
_LAST = (
    "Smith", "Jones", "Garcia", "Müller", "Rossi", "Dubois", "Kowalski", "Tanaka", "Novak", "Silva",
    "Brown", "Wilson", "Moreau", "Nielsen", "Ivanova", "Chen", "O'Brien"
)
_DOMAINS = (
    "example.com", "example.org", "example.net", "corp.example", "mail.example", "lists.example"
)
_UNICODE_SUBJECTS = [
    "Grüße aus München – Quartalsbericht",
    "Réunion déjà prévue ? Ça marche",
    "Отчёт о продажах за квартал",
    "会议记录：第三季度",
    "📎 Rechnung Nr. 4711 – fällig",
    "Ελληνικά και English mixed",
    "Zażółć gęślą jaźń",
]
_ATTACHMENT_KINDS = [
    ("application/pdf", "pdf"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "docx"),
    ("image/png", "png"),
]
_BASE_DATE = dt.datetime(2024, 3, 1, 9, 0, 0, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- #
# small building blocks
# --------------------------------------------------------------------------- #
def _lines(*lines: bytes | str) -> bytes:
    """Join header/body lines with CRLF (str is UTF-8 encoded)."""
    return CRLF.join(x.encode() if isinstance(x, str) else x for x in lines)


def _encoded_word(text: str) -> str:
    """RFC 2047 B-encoding, split so each encoded-word stays < 76 chars."""
    if text.isascii():
        return text
    words, chunk = [], ""
    for ch in text:
        if len((chunk + ch).encode()) > 45:
            words.append(chunk)
            chunk = ""
        chunk += ch
    words.append(chunk)
    return "\r\n ".join(
        "=?UTF-8?B?" + base64.b64encode(w.encode()).decode() + "?=" for w in words
    )


def _b64_lines(data: bytes) -> bytes:
    """Base64 with the customary 76-column lines."""
    enc = base64.b64encode(data)
    return CRLF.join(enc[i:i + 76] for i in range(0, len(enc), 76))


def _qp(text: str) -> bytes:
    """Minimal quoted-printable for UTF-8 text (soft line breaks at 76)."""
    out: list[bytes] = []
    for line in text.split("\n"):
        enc = b""
        for byte in line.encode():
            printable = 32 <= byte <= 126 and byte != ord("=")
            piece = bytes([byte]) if printable else b"=%02X" % byte
            if len(enc) + len(piece) > 75:
                out.append(enc + b"=")
                enc = b""
            enc += piece
        if enc.endswith(b" "):
            enc = enc[:-1] + b"=20"
        out.append(enc)
    return CRLF.join(out)


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
    return f"{first} {last}", f"{local or 'user'}@{rng.choice(_DOMAINS)}"


def _addr(name: str, email: str) -> str:
    """Display name + address, RFC 2047-encoding non-ASCII names."""
    if not name.isascii():
        return f"{_encoded_word(name)} <{email}>"
    if any(c in name for c in ",.'\"()<>@;:"):
        return '"' + name.replace('"', '\\"') + f'" <{email}>'
    return f"{name} <{email}>"


def _sentence(rng: random.Random, lo: int = 6, hi: int = 14) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(lo, hi))).capitalize() + "."


def _paragraphs(rng: random.Random, n: int) -> str:
    return "\n\n".join(
        "\n".join(_sentence(rng) for _ in range(rng.randint(1, 4))) for _ in range(n)
    )


def _fake_file(rng: random.Random, ext: str, size: int) -> bytes:
    """Bytes that look like a pdf/docx/png to magic-number sniffers."""
    body = rng.randbytes(size)
    if ext == "pdf":
        head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
        return head + body + b"\nendstream\n%%EOF\n"
    if ext == "docx":  # a zip local-file header naming [Content_Types].xml
        name = b"[Content_Types].xml"
        return (b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00" + b"\x00" * 12
                + len(name).to_bytes(2, "little") + b"\x00\x00" + name + body)
    if ext == "png":
        ihdr = b"IHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
        chunk = len(ihdr[4:]).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
        return b"\x89PNG\r\n\x1a\n" + chunk + body
    return body


def _msgid(seed: int, i: int) -> str:
    h = hashlib.sha1(f"{seed}/{i}".encode()).hexdigest()[:12]
    return f"<{i}.{h}@kmrl-corpus.example>"


def _date(rng: random.Random, i: int) -> str:
    t = _BASE_DATE + dt.timedelta(minutes=37 * i, seconds=rng.randint(0, 1800))
    tz = dt.timezone(dt.timedelta(hours=rng.choice([-5, 0, 1, 2, 9])))
    return t.astimezone(tz).strftime("%a, %d %b %Y %H:%M:%S %z")


# --------------------------------------------------------------------------- #
# realistic mails
# --------------------------------------------------------------------------- #
def realistic_mail(i: int, attachments: bool = False, seed: int = 0) -> bytes:
    """The ``i``-th mail of a realistic corpus (same args -> same bytes).

    Varies structure by ``i``: plain text (quoted-printable or 8bit),
    multipart/alternative with HTML, ASCII or RFC 2047 unicode subjects,
    To/Cc lists, and threads (every mail with ``i % 4 != 0`` replies to the
    previous one: In-Reply-To/References point at ``_msgid(seed, i-1)``).
    With ``attachments`` it becomes multipart/mixed with 1-2 base64
    attachments of 10-200 KB pdf/docx/png-like content.
    """
    rng = random.Random(f"kmrl-corpus/{seed}/{i}")
    thread_pos = i % 4
    root = i - thread_pos
    if rng.random() < 0.3:
        base_subject = _UNICODE_SUBJECTS[(root // 4) % len(_UNICODE_SUBJECTS)]
    else:
        base_subject = _sentence(random.Random(f"subj/{seed}/{root}"), 3, 7).rstrip(".")
    subject = ("Re: " if thread_pos else "") + base_subject

    sender = _person(rng)
    to = [_person(rng) for _ in range(rng.randint(1, 3))]
    headers = [
        f"Return-Path: <{sender[1]}>",
        f"Received: from mx{rng.randint(1, 9)}.example.net (mx.example.net [192.0.2.{rng.randint(1, 254)}])"
        f"\r\n\tby mail.example.org with ESMTPS id {rng.getrandbits(48):012x}; {_date(rng, i)}",
        f"Date: {_date(rng, i)}",
        f"From: {_addr(*sender)}",
        "To: " + ",\r\n ".join(_addr(*p) for p in to),
    ]
    if rng.random() < 0.3:
        headers.append(f"Cc: {_addr(*_person(rng))}")
    headers += [f"Subject: {_encoded_word(subject)}", f"Message-ID: {_msgid(seed, i)}"]
    if thread_pos:
        refs = " ".join(_msgid(seed, j) for j in range(root, i))
        headers += [f"In-Reply-To: {_msgid(seed, i - 1)}", f"References: {refs}"]
    headers += [f"X-Mailer: KMRL Corpus {rng.randint(1, 9)}.{rng.randint(0, 9)}",
                "MIME-Version: 1.0"]

    text = f"Hello {to[0][0].split()[0]},\n\n{_paragraphs(rng, rng.randint(1, 5))}\n\n-- \n{sender[0]}\n"
    if thread_pos:
        text += "\n> " + "\n> ".join(_sentence(rng) for _ in range(3)) + "\n"
    text_part_headers = [b"Content-Type: text/plain; charset=utf-8"]
    if rng.random() < 0.5:
        text_part_headers.append(b"Content-Transfer-Encoding: quoted-printable")
        text_body = _qp(text)
    else:
        text_part_headers.append(b"Content-Transfer-Encoding: 8bit")
        text_body = text.replace("\n", "\r\n").encode()
    text_part = _lines(*text_part_headers) + CRLF + CRLF + text_body

    boundary_alt = f"alt-{rng.getrandbits(64):016x}"
    if rng.random() < 0.5:  # multipart/alternative with HTML
        html = ("<html><body>" + "".join(f"<p>{p}</p>" for p in text.split("\n\n"))
                + "</body></html>")
        html_part = (b"Content-Type: text/html; charset=utf-8\r\n"
                     b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + _qp(html))
        body_part = (
            f"Content-Type: multipart/alternative; boundary=\"{boundary_alt}\"\r\n\r\n".encode()
            + f"--{boundary_alt}\r\n".encode() + text_part + CRLF
            + f"--{boundary_alt}\r\n".encode() + html_part + CRLF
            + f"--{boundary_alt}--\r\n".encode()
        )
    else:
        body_part = text_part

    if attachments:
        boundary = f"mix-{rng.getrandbits(64):016x}"
        parts = [body_part]
        for n in range(rng.randint(1, 2)):
            ctype, ext = rng.choice(_ATTACHMENT_KINDS)
            size = rng.randint(10 << 10, 200 << 10)
            name = f"{rng.choice(['report', 'invoice', 'scan', 'Entwurf', 'résumé'])}-{i}-{n}.{ext}"
            disp = (f'attachment; filename="{name}"' if name.isascii()
                    else f"attachment; filename*=UTF-8''{_pct(name)}")
            parts.append(
                _lines(f"Content-Type: {ctype}; name=\"{_encoded_word(name)}\"",
                       f"Content-Disposition: {disp}",
                       "Content-Transfer-Encoding: base64")
                + CRLF + CRLF + _b64_lines(_fake_file(rng, ext, size))
            )
        mime = (f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
                "This is a multi-part message in MIME format.\r\n").encode()
        for p in parts:
            mime += f"--{boundary}\r\n".encode() + p + CRLF
        mime += f"--{boundary}--\r\n".encode()
        return _lines(*headers) + CRLF + mime
    # non-multipart-mixed: the body part's own headers join the top-level ones
    return _lines(*headers) + CRLF + body_part


def _pct(text: str) -> str:
    """RFC 2231/5987 percent-encoding of UTF-8."""
    safe = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in text.encode())


def realistic_mailbox(n: int, attachment_ratio: float = 0.2, seed: int = 0) -> Iterator[bytes]:
    """Yield ``n`` realistic mails; about ``attachment_ratio`` carry attachments.

    Which mails get attachments is itself deterministic in (seed, i), so the
    i-th mail is always identical to ``realistic_mail(i, ..., seed)``.
    """
    for i in range(n):
        with_att = random.Random(f"att/{seed}/{i}").random() < attachment_ratio
        yield realistic_mail(i, attachments=with_att, seed=seed)


# --------------------------------------------------------------------------- #
# malformed mails
# --------------------------------------------------------------------------- #
def _simple(*headers: bytes | str, body: bytes | str = b"Body.\r\n") -> bytes:
    if isinstance(body, str):
        body = body.encode()
    return _lines(*headers) + CRLF + CRLF + body


_STD_FROM = "From: Sender <sender@example.org>"
_STD_TO = "To: Sync <sync@example.org>"
_STD_DATE = "Date: Mon, 04 Mar 2024 10:00:00 +0100"


def _std(name: str, *extra: bytes | str, body: bytes | str = b"Body.\r\n") -> bytes:
    """A mail with sane From/To/Date/Message-ID plus ``extra`` headers."""
    return _simple(_STD_FROM, _STD_TO, _STD_DATE,
                   f"Message-ID: <{name}@malformed.example>", *extra, body=body)


def malformed_mails() -> list[tuple[str, bytes]]:
    """(name, raw) pairs of broken or hostile mails seen in the wild.

    Names are unique and stable, so tests can parametrize over them.  All use
    clean CRLF and come back from Dovecot byte-identical, except ``bare_lf``,
    ``mixed_line_endings``, ``bare_cr`` and ``nul_byte``, which the server
    normalises (see :func:`dovecot_roundtrip`).
    """
    b = "frontier-1234"
    mails: list[tuple[str, bytes]] = [
        ("unknown_charset", _std(
            "unknown_charset", "Subject: =?x-unknown-foo?Q?caf=E9?=", "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=x-unknown-foo",
            "Content-Transfer-Encoding: 8bit",
            body=b"Caf\xe9 \xff\xfe na\xefve \x81\x8d bytes\r\n")),
        ("broken_encoded_words", _std(
            "broken_encoded_words",
            "Subject: =?utf-8?B?SGVsbG8gV29y?= =?utf-8?Q?unterminated_word =?utf-8?B?!!!?=",
            "X-Bad-Charset: =?x-nonexistent?Q?abc?= =?utf-8?B?//79?=",  # -> invalid UTF-8
            "X-Glued: prefix=?iso-8859-1?q?=E4?=suffix =?utf-8??=")),
        ("comma_display_names", _simple(
            'From: "Doe, John" <john.doe@example.com>',
            'To: "Smith, Jane" <jane@example.com>, "O\'Brien, Pat (HR)" <pat@example.com>,'
            "\r\n Plain Name <plain@example.com>, undisclosed-recipients:;",
            'Cc: "=?utf-8?Q?M=C3=BCller=2C_Hans?=" <hans@example.de>, "a,b,c" <abc@example.com>',
            'Reply-To: "Doe, John \\"JD\\"" <jd@example.com>',
            _STD_DATE, "Message-ID: <comma_display_names@malformed.example>",
            "Subject: commas in display names")),
        ("raw_8bit_latin1_headers", _simple(
            b"From: J\xfcrgen M\xfcller <juergen@example.de>", _STD_TO.encode(),
            _STD_DATE.encode(), b"Message-ID: <raw_8bit_latin1_headers@malformed.example>",
            b"Subject: Gr\xfc\xdfe \xe0 tous, \xa3100",
            b"Content-Type: text/plain; charset=iso-8859-1",
            body=b"K\xe4se und Br\xf6tchen.\r\n")),
        ("raw_8bit_utf8_headers", _simple(
            "From: Jürgen Müller <juergen@example.de>", _STD_TO, _STD_DATE,
            "Message-ID: <raw_8bit_utf8_headers@malformed.example>",
            "Subject: Grüße 🚀 会议 – no encoded-words",
            "To: Zoë <zoe@exämple.org>",
            body="Ünïcödé body without MIME headers.\r\n")),
        ("missing_date", _simple(
            _STD_FROM, _STD_TO, "Subject: no Date header",
            "Message-ID: <missing_date@malformed.example>")),
        ("missing_message_id", _simple(
            _STD_FROM, _STD_TO, _STD_DATE, "Subject: no Message-ID header")),
        ("duplicate_message_id_1", _simple(
            _STD_FROM, _STD_TO, _STD_DATE, "Subject: duplicate id, first",
            "Message-ID: <dup@malformed.example>", body=b"First content.\r\n")),
        ("duplicate_message_id_2", _simple(
            "From: Someone Else <else@example.net>", _STD_TO,
            "Date: Tue, 05 Mar 2024 11:00:00 +0000", "Subject: duplicate id, second",
            "Message-ID: <dup@malformed.example>", body=b"Second, different content.\r\n")),
        ("nested_rfc822", _std(
            "nested_rfc822", "Subject: Fwd: nested", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{b}"',
            body=_lines(
                f"--{b}", "Content-Type: text/plain", "", "See forwarded mail.",
                f"--{b}", "Content-Type: message/rfc822",
                'Content-Disposition: attachment; filename="fwd.eml"', "",
                _std("inner", "Subject: inner mail", "MIME-Version: 1.0",
                     'Content-Type: multipart/mixed; boundary="inner-b"',
                     body=_lines("--inner-b", "Content-Type: text/plain", "", "inner text",
                                 "--inner-b", "Content-Type: application/octet-stream",
                                 "Content-Transfer-Encoding: base64",
                                 'Content-Disposition: attachment; filename="x.bin"', "",
                                 "AAECAwQFBgcICQ==", "--inner-b--", "")),
                f"--{b}--", ""))),
        ("zero_length_body", _std("zero_length_body", "Subject: empty body", body=b"")),
        ("no_header_body_separator", _lines(
            _STD_FROM, _STD_TO, _STD_DATE,
            "Message-ID: <no_header_body_separator@malformed.example>",
            "Subject: headers only, no blank line") + CRLF),
        ("header_without_colon", _simple(
            _STD_FROM, "This line is not a header at all", _STD_TO, _STD_DATE,
            "Message-ID: <header_without_colon@malformed.example>", "Subject: junk line")),
        ("multipart_missing_boundary", _std(
            "multipart_missing_boundary", "Subject: no boundary parameter", "MIME-Version: 1.0",
            "Content-Type: multipart/mixed",
            body=_lines("--whatever", "Content-Type: text/plain", "", "text", "--whatever--", ""))),
        ("multipart_missing_terminator", _std(
            "multipart_missing_terminator", "Subject: no closing boundary", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{b}"',
            body=_lines(f"--{b}", "Content-Type: text/plain", "", "part one",
                        f"--{b}", "Content-Type: text/plain", "", "part two, never closed", ""))),
        ("attachment_path_traversal", _std(
            "attachment_path_traversal", "Subject: evil filenames", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{b}"',
            body=_lines(
                f"--{b}", "Content-Type: text/plain", "", "see attachments",
                f"--{b}", 'Content-Type: text/plain; name="../../etc/passwd"',
                'Content-Disposition: attachment; filename="../../etc/passwd"', "",
                "root:x:0:0:root:/root:/bin/bash",
                f"--{b}", 'Content-Type: application/octet-stream; name="C:\\\\evil\\\\x.exe"',
                'Content-Disposition: attachment; filename="C:\\evil\\x.exe"',
                "Content-Transfer-Encoding: base64", "", "TVqQAAMAAAAEAAAA//8AALgAAAA=",
                f"--{b}", "Content-Type: text/plain",
                'Content-Disposition: attachment; filename="/abs/path/.hidden"', "", "hidden",
                f"--{b}--", ""))),
        ("rfc2231_filenames", _std(
            "rfc2231_filenames", "Subject: RFC 2231 parameters", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{b}"',
            body=_lines(
                f"--{b}", "Content-Type: text/plain", "", "two attachments",
                f"--{b}", "Content-Type: application/pdf",
                "Content-Disposition: attachment;",
                " filename*=UTF-8''%E2%82%AC%20Rechnung%20f%C3%BCr%20M%C3%A4rz.pdf",
                "Content-Transfer-Encoding: base64", "", "JVBERi0xLjQK",
                f"--{b}", "Content-Type: text/plain",
                "Content-Disposition: attachment;",
                " filename*0*=iso-8859-1'de'Gr%FC%DFe%20aus%20;",
                " filename*1=\"dem Urlaub\";",
                " filename*2*=%2E%2E%2F%2E%2E%2Fevil.txt", "", "continuations + traversal",
                f"--{b}", "Content-Type: text/plain",
                "Content-Disposition: attachment; filename*=bogus-charset''%FF%FE.txt", "",
                "bad charset in 2231",
                f"--{b}--", ""))),
        ("long_header_line", _std(
            "long_header_line", "Subject: " + "very long subject " * 20,
            "X-Long: " + "".join(f"{n:06d}," for n in range(30000)),  # ~210 KB, unfolded
            "References: " + " ".join(f"<ref{n}@example.org>" for n in range(2000)))),
        ("bare_lf", (
            f"{_STD_FROM}\n{_STD_TO}\n{_STD_DATE}\nMessage-ID: <bare_lf@malformed.example>\n"
            "Subject: bare LF line endings\n\nLine one.\nLine two.\n").encode()),
        ("mixed_line_endings", (
            f"{_STD_FROM}\r\n{_STD_TO}\n{_STD_DATE}\r\n"
            "Message-ID: <mixed_line_endings@malformed.example>\n"
            "Subject: CRLF and LF mixed\r\n\nLine one.\r\nLine two.\nLine three.\r\n").encode()),
        ("bare_cr", _std(
            "bare_cr", "Subject: bare CR inside the body",
            body=b"Old Mac line one.\rOld Mac line two.\r\r\nThen CRLF.\r\n")),
        ("nul_byte", _std(
            "nul_byte", "Subject: NUL bytes in the body",
            body=b"before\x00after\r\n\x00\x00\r\n")),
        ("html_only", _std(
            "html_only", "Subject: HTML only", "MIME-Version: 1.0",
            "Content-Type: text/html; charset=utf-8",
            body="<html><head><style>p{color:red}</style><script>alert(1)</script></head>"
                 "<body><p>Nur <b>HTML</b>, kein Text-Teil. &auml;&#8364;</p>"
                 "<img src=\"http://tracker.example/p.gif\"></body></html>\r\n")),
        ("invalid_base64_attachment", _std(
            "invalid_base64_attachment", "Subject: broken base64", "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{b}"',
            body=_lines(
                f"--{b}", "Content-Type: text/plain", "", "see attachment",
                f"--{b}", "Content-Type: application/pdf",
                'Content-Disposition: attachment; filename="broken.pdf"',
                "Content-Transfer-Encoding: base64", "",
                "JVBERi0xLj!!!QK*&^%$#@ not base64 at all ====", "QUJD=RE", "A",
                f"--{b}--", ""))),
        ("garbage_date", _simple(
            _STD_FROM, _STD_TO, "Date: sometime last tuesday, 99:99 (ish) +9999",
            "Message-ID: <garbage_date@malformed.example>", "Subject: garbage date")),
        ("unknown_transfer_encoding", _std(
            "unknown_transfer_encoding", "Subject: x-uuencode-ish CTE", "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: x-made-up", body=b"begin 644 x\r\n`\r\nend\r\n")),
        ("8bit_body_no_mime", _simple(
            _STD_FROM, _STD_TO, _STD_DATE, "Message-ID: <8bit_body_no_mime@malformed.example>",
            "Subject: 8-bit body without MIME headers",
            body=b"Latin-1: \xe4\xf6\xfc\r\nUTF-8: \xc3\xa4\xc3\xb6\xc3\xbc\r\nBroken: \xc3\x28\r\n")),
    ]
    return mails


def dovecot_roundtrip(raw: bytes) -> bytes:
    """What Dovecot 2.3 returns as ``BODY[]`` for a mail APPENDed as ``raw``.

    Observed with Maildir (``mail_save_crlf = no``): on save every CRLF *and
    every bare CR* becomes LF; on FETCH every LF is sent as CRLF and NUL bytes
    are sent as 0x80 (the file on disk keeps the NUL).  Hence clean-CRLF mails
    without NUL round-trip byte-identically; nothing else (8-bit, invalid
    encodings, 200 KB header lines) is touched.  The RFC822.SIZE the server
    reports is that of the returned (CRLF) form.
    """
    lf = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return lf.replace(b"\n", b"\r\n").replace(b"\x00", b"\x80")
