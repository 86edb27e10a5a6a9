"""An unmodified Celery app, as the hub's workers declare it, for end-to-end tests.

The broker is $KMRL_TEST_BROKER; with $KMRL_TEST_SENTINEL_MASTER set it is a kombu Sentinel URL
(`sentinel://:password@host:port;sentinel://...`) and the app reaches the master of that name as a
hub behind Sentinel would: kombu's sentinel transport (transport option `master_name`, the
Sentinels' own password in `sentinel_kwargs`), and redis-py's Sentinel for the document hashes.

Every task run is appended to the file named by $KMRL_TEST_TASK_LOG, one JSON line each, so a
test can count exactly which tasks ran. `process_document` also reads the document's content as
the README's worker does (its `blob`, an absolute file:// URI, opened from the worker's own working
directory) and records whether it matched the document's sha256.

With $KMRL_TEST_HOLD set (a path), the first task creates `<path>.started` and waits for
`<path>.release` before it runs: a test can act (kill the broker's master) at an instant when the
worker has taken its message and has nothing in flight with the broker.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit

import redis
from celery import Celery
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tests.support.documents import document
from tests.support.waiting import wait_until

app = Celery("hub", broker=os.environ.get("KMRL_TEST_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True
SENTINEL_MASTER = os.environ.get("KMRL_TEST_SENTINEL_MASTER")
if SENTINEL_MASTER:
    app.conf.broker_transport_options = {
        "master_name": SENTINEL_MASTER,
        "sentinel_kwargs": {"password": os.environ.get("KMRL_TEST_SENTINEL_PASSWORD")},
    }


def _store() -> redis.Redis:
    """Where the document hashes are: the broker's Redis (through the Sentinels when it is theirs)."""
    if not SENTINEL_MASTER:
        return redis.Redis.from_url(app.conf.broker_url)
    urls = [urlsplit(part) for part in app.conf.broker_url.split(";")]
    sentinel = Sentinel([(u.hostname, u.port) for u in urls], sentinel_kwargs=app.conf.broker_transport_options[
        "sentinel_kwargs"])
    # redis-py's own retries, long enough to wait out a failover (the Sentinels are asked on each)
    return sentinel.master_for(SENTINEL_MASTER, password=urls[0].password,
                               retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 60))


def _record(task: str, document_id: str, **extra: str) -> None:
    with open(os.environ["KMRL_TEST_TASK_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"task": task, "document_id": document_id, **extra}) + "\n")


def _content(document_id: str) -> str:
    """"ok" when the stored content matches the document's sha256, "none" without content, else why not."""
    client = _store()
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


def _hold_first_task() -> None:
    hold = os.environ.get("KMRL_TEST_HOLD")
    if not hold:
        return
    started, release = Path(hold + ".started"), Path(hold + ".release")
    if started.exists():
        return
    started.touch()
    wait_until(release.exists, 300, f"{release} (the test's release of the held task)", interval=0.01)


@app.task(name="process_document")
def process_document(document_id):
    _hold_first_task()
    _record("process_document", document_id, content=_content(document_id))


@app.task(name="delete_document")
def delete_document(document_id):
    _record("delete_document", document_id)
