"""An unmodified Celery app, as the hub's workers declare it, for end-to-end tests.

Every task run is appended to the file named by $KMRL_TEST_TASK_LOG, one JSON line each, so a
test can count exactly which tasks ran. `process_document` also reads the document's content as
the README's worker does (its `blob`, an absolute file:// URI, opened from the worker's own working
directory) and records whether it matched the document's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from urllib.parse import unquote_to_bytes, urlsplit

import redis
from celery import Celery

from tests.support.documents import document

app = Celery("hub", broker=os.environ.get("KMRL_TEST_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


def _record(task: str, document_id: str, **extra: str) -> None:
    with open(os.environ["KMRL_TEST_TASK_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"task": task, "document_id": document_id, **extra}) + "\n")


def _content(document_id: str) -> str:
    """"ok" when the stored content matches the document's sha256, "none" without content, else why not."""
    client = redis.Redis.from_url(app.conf.broker_url)
    meta = document(client, document_id)
    blob = meta.get("blob", "")
    if not blob:
        return "none"
    parts = urlsplit(blob)
    if parts.scheme != "file":
        return f"not a file:// URI: {blob}"
    try:
        with open(unquote_to_bytes(parts.path), "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"cannot open: {exc}"
    return "ok" if hashlib.sha256(data).hexdigest() == meta.get("sha256") else "sha256 mismatch"


@app.task(name="process_document")
def process_document(document_id):
    _record("process_document", document_id, content=_content(document_id))


@app.task(name="delete_document")
def delete_document(document_id):
    _record("delete_document", document_id)
