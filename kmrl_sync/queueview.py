"""`kmrl-sync queue`: what is waiting for the workers, decoded, oldest first."""

from __future__ import annotations

import base64
import json
from typing import Any

from kmrl_sync.redaction import redact
from kmrl_sync.sinks import KOMBU_PRIORITY_SEP, queue_target

PRIORITY_STEPS = (0, 3, 6, 9)


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


def show_queues(engine: Any, limit: int) -> None:
    client, config = engine.client, engine.config
    seen: set[str] = set()
    for name, cfg in config.connectors.items():
        keys = engine.state(name).keys
        target = queue_target(cfg.queue, cfg.priority, keys)
        if target.format == "stream":
            length = client.xlen(target.key)
            print(f"{target.key} (stream): {length} entries")
            for _id, fields in client.xrange(target.key, count=limit):
                print(f"  {fields[b'event'].decode()}: {fields[b'document_id'].decode()}")
            continue
        lists = [cfg.queue.name] + [f"{cfg.queue.name}{KOMBU_PRIORITY_SEP}{p}" for p in PRIORITY_STEPS[1:]]
        for key in lists:
            if key in seen:
                continue
            seen.add(key)
            length = client.llen(key)
            if not length and key != cfg.queue.name:
                continue
            shown = key.replace(KOMBU_PRIORITY_SEP, " priority ")
            print(f"{shown} ({cfg.queue.format}): {length} waiting")
            for raw in client.lrange(key, -limit, -1)[::-1]:  # BRPOP takes from the right: oldest first
                print(f"  {_describe(raw, cfg.queue.format)}")
            if length > limit:
                print(f"  ... and {length - limit} more")
