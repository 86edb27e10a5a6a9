"""Helpers shared by the IMAP integration tests: connector YAML, reading the Celery queue."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

import redis

from tests.support.documents import document
from tests.support.dovecot import DovecotMailbox

QUEUE = "document_processing"


def write_connector(project, name: str, box: DovecotMailbox, *, folders: str = "[INBOX, Archive]",
                    extra: str = "", password: str | None = None) -> Path:
    secret = Path(project.root) / f"{name}.secret"
    secret.write_text((password if password is not None else box.password) + "\n")
    return project.connector(name, f"""\
type: imap
schedule: {{every: 1m}}
department: operations
options:
  host: 127.0.0.1
  port: {box.port}
  tls: false
  username: "{box.user}"
  password_file: {secret}
  folders: {folders}
{extra}""")


def queued(client: redis.Redis) -> list[tuple[str, str]]:
    """(task, document_id) of every Celery message on the queue, oldest first."""
    out: list[tuple[str, str]] = []
    for raw in reversed(client.lrange(QUEUE, 0, -1)):  # LPUSH + BRPOP: the tail is the oldest
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args[0][0]))
    return out


def counts(client: redis.Redis) -> Counter[tuple[str, str]]:
    return Counter(queued(client))


def doc(client: redis.Redis, document_id: str) -> dict[str, str]:
    return document(client, document_id)


def inbox_and_archive(box: DovecotMailbox, inbox, archive) -> None:
    """The usual mailbox of these tests: the mails `inbox` in INBOX, `archive` in a new folder Archive."""
    box.create_folder("Archive")
    bulk_append(box, "INBOX", inbox)
    bulk_append(box, "Archive", archive)


def bulk_append(box: DovecotMailbox, folder: str, mails, flags=()) -> list[int]:
    """APPEND many mails over one connection (the harness helper logs in once per mail)."""
    import re

    uids: list[int] = []
    with box.client() as c:
        for raw in mails:
            resp = c.append(folder, raw, flags=tuple(flags))
            text = resp.decode() if isinstance(resp, bytes) else str(resp)
            match = re.search(r"APPENDUID \d+ (\d+)", text)
            uids.append(int(match.group(1)) if match else 0)
    return uids


def mail_ids(client: redis.Redis, connector: str) -> set[str]:
    """Document ids of queued mails (not attachments)."""
    return {d for _t, d in queued(client) if "/att/" not in d}
