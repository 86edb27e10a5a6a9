"""Turn one fetched mail into documents: the mail itself and each of its attachments.

Separate from the folder walk so the content side (blob store, parsing, metadata fields) can be
tested and profiled without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from kmrl_sync.connectors.imap.blobwriter import BlobWriter
from kmrl_sync.connectors.imap.parse import iso_utc, parse_mail, sanitise_filename
from kmrl_sync.engine.documents import Failure, Upsert


@dataclass(frozen=True, slots=True)
class MailSource:
    """Where a fetched mail came from, for metadata and links."""

    connector: str
    username: str
    host: str
    port: int
    folder: str
    uidvalidity: int
    uid: int

    @property
    def url(self) -> str:
        """An RFC 5092 IMAP URL of the message."""
        return (f"{_mailbox_url(self.username, self.host, self.port, self.folder)}"
                f";UIDVALIDITY={self.uidvalidity}/;UID={self.uid}")


@lru_cache(maxsize=64)
def _mailbox_url(username: str, host: str, port: int, folder: str) -> str:
    """The folder's part of a message URL, quoted once per folder rather than once per document."""
    return f"imap://{quote(username, safe='')}@{host}:{port}/{quote(folder, safe='/')}"


def attachment_id(parent: str, index: int, filename: str) -> str:
    return f"{parent}/att/{index}-{filename}"


def mail_documents(
    raw: bytes,
    doc_id: str,
    message_id: str | None,
    source: MailSource,
    internal_date: datetime | None,
    blobs: BlobWriter,
    *,
    attachments: bool,
    max_attachment_bytes: int,
) -> tuple[list[Upsert], list[Failure]]:
    """The mail's Upsert first, then one per attachment (when enabled); oversize ones are failures."""
    parsed = parse_mail(raw, attachments=attachments, max_attachment_bytes=max_attachment_bytes)
    received = iso_utc(internal_date) if internal_date else ""
    when = parsed.date or received
    url = source.url
    title = parsed.subject or message_id or doc_id
    mail_meta: dict[str, Any] = {
        "filename": sanitise_filename(title[:120], 0, "message/rfc822") + ".eml",
        "sha256": "",  # sha256, size, blob and the version are filled in when the blob is written
        "size": len(raw),
        "mime_type": "message/rfc822",
        "blob": "",
        "source_url": url,
        "modified_at": when,
        "from": parsed.sender,
        "to": parsed.to,
        "cc": parsed.cc,
        "subject": parsed.subject,
        "date": parsed.date,
        "message_id": message_id or "",
        "folder": source.folder,
        "uid": source.uid,
        "uidvalidity": source.uidvalidity,
        "internal_date": received,
        "has_attachments": "true" if parsed.attachments else "false",
        "attachment_count": len(parsed.attachments),
        "body": parsed.body,
    }
    if parsed.body_truncated:
        mail_meta["body_truncated"] = "true"
    if parsed.problems:
        mail_meta["parse_problems"] = parsed.problems
    upserts = [Upsert(doc_id, "", mail_meta)]
    blobs.put(raw, upserts[0])
    failures: list[Failure] = []
    if not attachments:
        return upserts, failures
    parent = f"{source.connector}:{doc_id}"
    for att in parsed.attachments:
        native = attachment_id(doc_id, att.index, att.filename)
        if att.data is None:
            failures.append(Failure(native, att.error or "attachment content unavailable"))
            continue
        upsert = Upsert(native, "", {
            "filename": att.filename,
            "sha256": "",
            "size": att.size,
            "mime_type": att.mime_type,
            "blob": "",
            "source_url": url,
            "modified_at": when,
            "parent_document_id": parent,
            "parent_message_id": message_id or "",
            "attachment_index": att.index,
            "subject": parsed.subject,
            "from": parsed.sender,
            "folder": source.folder,
        })
        blobs.put(att.data, upsert)
        upserts.append(upsert)
    return upserts, failures
