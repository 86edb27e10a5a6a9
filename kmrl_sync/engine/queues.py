"""How a work item looks on the queue, per `queue.format`.

`celery`: a Celery protocol-2 message as kombu's Redis transport stores it, byte-compatible with
what `app.send_task(...)` produces, so an unmodified worker runs it. The envelope is rendered from a
template because it is built for every document on the hot path of a 100,000-file sync.
`list` and `stream`: built inside the commit script, which alone knows whether a document is
`created` or `updated` at commit time.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.keys import ConnectorKeys, celery_queue_key, kombu_bindings


@dataclass(frozen=True)
class Placement:
    """Where a connector's `priority` puts its work: the one reading of that setting."""

    level: int  # the Celery priority step (keys.KOMBU_PRIORITY_STEPS; 0 is consumed first)
    side: str  # 'L' or 'R': workers BRPOP, so 'R' is taken before everything already waiting


def placement(priority: str) -> Placement:
    """The only interpreter of a connector's `priority` (low, normal, high).

    "normal" is what a plain Celery client sends (priority 0, the plain list, pushed on the left) so
    the hub's own monitoring of `document_processing` sees our work; "high" jumps the line on that
    same list (pushed on the right, where workers take from); "low" waits on priority step 6, which
    workers consume after the plain list. A `list` queue has no steps: only the side applies.
    """
    if priority == "high":
        return Placement(0, "R")
    if priority == "normal":
        return Placement(0, "L")
    if priority == "low":
        return Placement(6, "L")
    raise ValueError(f"unknown priority {priority!r} (low, normal, high)")

_EMBED = json.dumps({"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def _celery_template() -> str:
    """The exact field order and values `celery.app.amqp.as_task_v2` + kombu produce."""
    envelope = {
        "body": "@BODY@",
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "@TASK@",
            "id": "@ID@",
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": "@ID@",
            "parent_id": None,
            "argsrepr": "@ARGSREPR@",
            "kwargsrepr": "{}",
            "origin": "@ORIGIN@",
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": "@ID@",
            "reply_to": "@REPLYTO@",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "@ROUTING@"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": "@TAG@",
        },
    }
    text = json.dumps(envelope).replace("%", "%%")
    for name in ("BODY", "ID", "ARGSREPR", "TAG"):
        text = text.replace(f'"@{name}@"', "%(" + name.lower() + ")s")
    return text


# Document ids made only of these need no escaping in JSON nor in repr(): the common case, rendered
# by concatenation instead of two json.dumps and a repr per message.
_PLAIN_ID = re.compile(r"[A-Za-z0-9 _.,:;/@#()+=~!$&*\[\]{}|<>^`?-]*")


def _split_template(template: str) -> tuple[list[str], list[tuple[int, str]]]:
    """The %-template as literal parts plus (index, slot name) of each placeholder, for join()."""
    parts = re.split(r"%\((body|id|argsrepr|tag)\)s", template)
    slots = [(i, name) for i, name in enumerate(parts) if i % 2]
    return [part.replace("%%", "%") if i % 2 == 0 else "" for i, part in enumerate(parts)], slots


@dataclass(frozen=True)
class QueueTarget:
    format: str
    key: str  # the Redis list or stream the commit script pushes to
    side: str  # 'L' or 'R'
    # kombu's binding sets a Celery client declares (queue routing for exchange publishes)
    binding_keys: tuple[str, ...] = ()
    binding_member: str = ""


class CeleryMessages:
    def __init__(self, queue: QueueConfig, priority: str):
        origin = f"gen{os.getpid()}@{socket.gethostname()}"
        reply_to = str(uuid.uuid3(uuid.NAMESPACE_OID, origin))
        template = _celery_template()
        template = template.replace('"@ORIGIN@"', json.dumps(origin))
        template = template.replace('"@REPLYTO@"', json.dumps(reply_to))
        template = template.replace('"@ROUTING@"', json.dumps(queue.name))
        template = template.replace('"priority": 0', f'"priority": {placement(priority).level}')
        self._process = template.replace('"@TASK@"', json.dumps(queue.task).replace("%", "%%"))
        self._delete = template.replace('"@TASK@"', json.dumps(queue.delete_task).replace("%", "%%"))

    def batch(self) -> Callable[[str, bool], str]:
        """A renderer for one batch: task ids share a random per-batch base plus a counter.

        uuid4 per message costs more than the rest of the rendering; ids only need to be unique,
        and a fresh 96-bit random base per batch keeps them so across processes and hosts.
        """
        base = uuid.uuid4().hex
        stem = f"{base[:8]}-{base[8:12]}-4{base[13:16]}-{'89ab'[int(base[16], 16) % 4]}{base[17:20]}-"
        tag_stem = uuid.uuid4().hex[:20]
        counter = itertools.count()
        process, delete = _split_template(self._process), _split_template(self._delete)
        b64 = base64.b64encode
        dumps = json.dumps
        plain = _PLAIN_ID.fullmatch
        id_stem = f'"{stem}{base[20:24]}'
        tag_prefix = f'"{tag_stem[:8]}-{tag_stem[8:12]}-4{tag_stem[12:15]}-a{tag_stem[15:18]}-'

        def render(document_id: str, is_upsert: bool) -> str:
            n = next(counter)
            if plain(document_id):
                quoted = '"' + document_id + '"'
                argsrepr = "\"['" + document_id + "']\""
            else:
                quoted = dumps(document_id)
                argsrepr = dumps(f"[{document_id!r}]")
            values = {
                "body": '"' + b64(f"[[{quoted}], {{}}, {_EMBED}]".encode()).decode() + '"',
                "id": f'{id_stem}{n:08x}"',
                "argsrepr": argsrepr,
                "tag": f'{tag_prefix}{n:012x}"',
            }
            parts, slots = process if is_upsert else delete
            out = parts.copy()
            for index, name in slots:
                out[index] = values[name]
            return "".join(out)

        return render


def queue_target(queue: QueueConfig, priority: str, keys: ConnectorKeys) -> QueueTarget:
    if queue.format == "stream":
        return QueueTarget("stream", keys.stream(queue.name), "L")
    place = placement(priority)
    if queue.format == "list":
        return QueueTarget("list", queue.name, place.side)
    binding_keys, binding_member = kombu_bindings(queue.name)
    return QueueTarget("celery", celery_queue_key(queue.name, place.level), place.side,
                       binding_keys=binding_keys, binding_member=binding_member)
