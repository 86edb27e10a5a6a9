"""An unmodified Celery app, as the hub's workers declare it, for end-to-end tests.

Every task run is appended to the file named by $KMRL_TEST_TASK_LOG, one JSON line each, so a
test can count exactly which tasks ran.
"""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery("hub", broker=os.environ.get("KMRL_TEST_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True


def _record(task: str, document_id: str) -> None:
    with open(os.environ["KMRL_TEST_TASK_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"task": task, "document_id": document_id}) + "\n")


@app.task(name="process_document")
def process_document(document_id):
    _record("process_document", document_id)


@app.task(name="delete_document")
def delete_document(document_id):
    _record("delete_document", document_id)
