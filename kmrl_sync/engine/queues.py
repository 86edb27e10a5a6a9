"""How a work item looks on the queue, per `queue.format`.

`celery`: a Celery protocol-2 message as kombu's Redis transport stores it, byte-compatible with
what `app.send_task(...)` produces, so an unmodified worker runs it. The commit script assembles
each message from a template sent once per batch (`CeleryMessages.templates`) and what differs per
document (`celery_tail`: the base64 body; ids and delivery tags it numbers itself): the envelope is
four fifths of a message, and sending it whole for every document made its bytes the largest cost
of a 100,000-file sync (rendering, encoding and sending them in this process, parsing them in Redis).
`list` and `stream`: built inside the commit script, which alone knows whether a document is
`created` or `updated` at commit time.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import uuid
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


def _script_template(template: str) -> str:
    """The %-template as the commit script takes it: literal, slot name, literal, ... joined by NULs
    (JSON text holds no raw NUL, so the literals never do)."""
    pieces = re.split(r"%\((body|id|argsrepr|tag)\)s", template)
    literals = [piece.replace("%%", "%") if i % 2 == 0 else piece for i, piece in enumerate(pieces)]
    if any("\0" in piece for piece in literals):
        raise ValueError("a Celery message template holds a NUL character")
    return "\0".join(literals)


def celery_tail(document_id: str) -> str:
    """What the commit script needs of one document's message beyond the template: the body
    (base64 of the task's args), then, for an id that JSON or repr() would escape, a NUL and the
    message's `argsrepr` (for the others the script writes it by concatenation)."""
    if _PLAIN_ID.fullmatch(document_id):
        return base64.b64encode(f'[["{document_id}"], {{}}, {_EMBED}]'.encode()).decode()
    body = base64.b64encode(f"[[{json.dumps(document_id)}], {{}}, {_EMBED}]".encode()).decode()
    return body + "\0" + json.dumps(f"[{document_id!r}]")


@dataclass(frozen=True)
class QueueTarget:
    format: str
    key: str  # the Redis list or stream the commit script pushes to
    side: str  # 'L' or 'R'
    # kombu's binding sets a Celery client declares (queue routing for exchange publishes)
    binding_keys: tuple[str, ...] = ()
    binding_member: str = ""


class CeleryMessages:
    """A connector's Celery envelopes (its queue, tasks and priority): the commit script fills them in."""

    def __init__(self, queue: QueueConfig, priority: str):
        origin = f"gen{os.getpid()}@{socket.gethostname()}"
        reply_to = str(uuid.uuid3(uuid.NAMESPACE_OID, origin))
        template = _celery_template()
        template = template.replace('"@ORIGIN@"', json.dumps(origin))
        template = template.replace('"@REPLYTO@"', json.dumps(reply_to))
        template = template.replace('"@ROUTING@"', json.dumps(queue.name))
        template = template.replace('"priority": 0', f'"priority": {placement(priority).level}')
        process = template.replace('"@TASK@"', json.dumps(queue.task).replace("%", "%%"))
        delete = template.replace('"@TASK@"', json.dumps(queue.delete_task).replace("%", "%%"))
        # (process task, delete task), as the commit script takes them
        self.templates = (_script_template(process), _script_template(delete))

    @staticmethod
    def batch_ids() -> tuple[str, str]:
        """The stems of one batch's task ids and delivery tags: the script appends each document's
        position in the batch (8 and 12 hex digits) and the closing quote.

        uuid4 per message cost more than the rest of the rendering; ids only need to be unique,
        and a fresh 96-bit random base per batch keeps them so across processes and hosts.
        """
        base, tag = uuid.uuid4().hex, uuid.uuid4().hex[:20]
        id_stem = f'"{base[:8]}-{base[8:12]}-4{base[13:16]}-{"89ab"[int(base[16], 16) % 4]}{base[17:20]}-{base[20:24]}'
        return id_stem, f'"{tag[:8]}-{tag[8:12]}-4{tag[12:15]}-a{tag[15:18]}-'


def queue_target(queue: QueueConfig, priority: str, keys: ConnectorKeys) -> QueueTarget:
    if queue.format == "stream":
        return QueueTarget("stream", keys.stream(queue.name), "L")
    place = placement(priority)
    if queue.format == "list":
        return QueueTarget("list", queue.name, place.side)
    binding_keys, binding_member = kombu_bindings(queue.name)
    return QueueTarget("celery", celery_queue_key(queue.name, place.level), place.side,
                       binding_keys=binding_keys, binding_member=binding_member)
