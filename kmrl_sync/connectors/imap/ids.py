"""Document identity of a mail: its Message-ID, else a stable hash of its raw header block.

Deliberately independent of the `email` package: identity is computed for every fetched mail,
including moved ones that need no parsing at all, so it has to be cheap, and it must be the
same bytes-in/id-out function on every run whatever the parser would repair.
"""

from __future__ import annotations

import hashlib
import re

_MSGID_LINE = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_BRACKETED = re.compile(r"<([^<>]*)>")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")
MAX_ID_LENGTH = 200


def header_block(raw: bytes) -> bytes:
    """The header section: everything before the first empty line (all of it if there is none)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end != -1:
            return raw[: end + len(sep) // 2]
    return raw


def header_hash_id(raw: bytes) -> str:
    """`hdr-<sha256>` of the header block with line endings normalised (servers differ on CRLF)."""
    block = header_block(raw).replace(b"\r\n", b"\n").replace(b"\r", b"\n").rstrip(b"\n")
    return "hdr-" + hashlib.sha256(block).hexdigest()[:40]


def normalise_message_id(value: str) -> str | None:
    """`<Abc@Example.ORG>` -> `Abc@example.org`; None when there is nothing usable.

    The local part is case-sensitive by RFC 5322, the domain is not; whitespace and folding
    inside the brackets (some mailers break long ids) are dropped.
    """
    value = value.strip()
    match = _BRACKETED.search(value)
    inner = match.group(1) if match else value.split()[0] if value.split() else ""
    inner = _CONTROL.sub("", inner)
    if not inner or inner in ("@",):
        return None
    local, at, domain = inner.rpartition("@")
    if at:
        inner = f"{local}@{domain.lower()}"
    if len(inner.encode("utf-8", "surrogatepass")) > MAX_ID_LENGTH:
        return "mid-" + hashlib.sha256(inner.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return inner


def message_id_of(raw: bytes) -> str | None:
    """The normalised Message-ID of the first Message-ID header, read straight from the bytes."""
    match = _MSGID_LINE.search(header_block(raw))
    if not match:
        return None
    text = match.group(1).decode("utf-8", "replace")
    return normalise_message_id(text)
