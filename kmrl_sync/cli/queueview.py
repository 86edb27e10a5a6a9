"""`kmrl-sync queue`: what is waiting for the workers, decoded, oldest first.

Queue items carry document ids (file names, Message-IDs) and foreign messages anything at all:
every line is made visible (display.py) before it is printed.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from kmrl_sync.display import visible
from kmrl_sync.engine.keys import KOMBU_PRIORITY_SEP, celery_queue_keys
from kmrl_sync.engine.queues import queue_target
from kmrl_sync.redaction import redact


def _describe(raw: bytes, fmt: str) -> str:
    try:
        if fmt == "celery":
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            return f"{message['headers']['task']}({args[0]!r})"
        item = json.loads(raw)
        return f"{item['event']}: {item['document_id']}"
    except (ValueError, KeyError, IndexError, TypeError):
        text = redact(repr(raw))  # before shortening it: half a secret would not be recognised
        return f"(not ours) {text[:80]}{'...' if len(text) > 80 else ''}"


def _say(line: str) -> None:
    print(visible(line))


def show_queues(engine: Any, limit: int) -> None:
    client, config = engine.client, engine.config
    seen: set[str] = set()
    for name, cfg in config.connectors.items():
        keys = engine.state(name).keys
        target = queue_target(cfg.queue, cfg.priority, keys)
        if target.format == "stream":
            length = client.xlen(target.key)
            _say(f"{target.key} (stream): {length} entries")
            for _id, fields in client.xrange(target.key, count=limit):
                event, doc = (fields.get(k, b"?").decode("utf-8", "replace") for k in (b"event", b"document_id"))
                _say(f"  {event}: {doc}")
            continue
        for key in celery_queue_keys(cfg.queue.name):
            if key in seen:
                continue
            seen.add(key)
            length = client.llen(key)
            if not length and key != cfg.queue.name:
                continue
            shown = key.replace(KOMBU_PRIORITY_SEP, " priority ")
            _say(f"{shown} ({cfg.queue.format}): {length} waiting")
            for raw in client.lrange(key, -limit, -1)[::-1]:  # BRPOP takes from the right: oldest first
                _say(f"  {_describe(raw, cfg.queue.format)}")
            if length > limit:
                _say(f"  ... and {length - limit} more")
