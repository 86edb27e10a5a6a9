"""Decode what sits on the Celery queues, to count work items exactly."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import redis

PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


@dataclass(frozen=True)
class QueuedTask:
    task: str
    document_id: str
    task_id: str
    raw: dict


def decode_message(raw: bytes) -> QueuedTask:
    message = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return QueuedTask(message["headers"]["task"], args[0], message["headers"]["id"], message)


def decode_queue(client: redis.Redis, queue: str = "document_processing") -> list[QueuedTask]:
    """Every message on the queue and its priority lists, oldest first (LPUSH + BRPOP = FIFO)."""
    tasks: list[QueuedTask] = []
    for suffix in PRIORITY_SUFFIXES:
        tasks.extend(decode_message(raw) for raw in reversed(client.lrange(queue + suffix, 0, -1)))
    return tasks
