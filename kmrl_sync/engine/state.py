"""A connector's state in Redis, read and written only through this class and its Lua scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import TYPE_CHECKING, Any

import redis

from kmrl_sync.display import clipped
from kmrl_sync.engine.connection import run_replicated
from kmrl_sync.engine.documents import Batch, Delete, Upsert
from kmrl_sync.engine.docview import Compactor
from kmrl_sync.engine.keys import ConnectorKeys, connectors_set
from kmrl_sync.engine.memory import is_out_of_memory, refusal
from kmrl_sync.engine.queues import CeleryMessages, QueueTarget, celery_tail
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.redaction import redact

if TYPE_CHECKING:  # imported only where encryption is configured (PyNaCl is not free to import)
    from kmrl_sync.content.crypto import FieldCipher

KNOWN_PAGE = 2000
# The failed-documents list (see commit_batch.lua): at most this many per connector, the least
# recently failed dropped first; each reason cut to this many characters. Reasons are untrusted
# text (file names, server errors): bounded here, escaped where they are printed.
FAILED_DOCUMENTS_KEPT = 100
FAILURE_REASON_CHARS = 500


class LeaseLost(RuntimeError):
    """Our lease expired and someone else holds it: committing now could overwrite their work."""


class CommitsLost(RuntimeError):
    """Redis no longer holds commits of this run it had acknowledged (see commit_batch.lua, ARGV[13]).

    What asynchronous replication allows when a master fails over to a replica that had not
    received its last writes. Committing on would move the cursor past the lost batches; stopping
    lets the next run redo them from the state the new master has.
    """


class DefaultsChanged(RuntimeError):
    """A default this run's documents rely on was stored with another value meanwhile (docview.py)."""


@dataclass(frozen=True, slots=True)
class PreparedCommit:
    """The commit script's KEYS and ARGV for one batch, ready to send (and to resend on retry)."""

    keys: list[str]
    args: list[str]


@dataclass(slots=True)
class CommitResult:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# json.dumps(value, ensure_ascii=False) builds a new encoder on every call (only the all-defaults
# call reuses one): a third of the cost of a mail's `to` or `cc` list. Same settings, made once.
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def _text(value: Any) -> str:
    # Hash fields are strings; lists/dicts travel as JSON (Lua never parses them).
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return _to_json(value)
    return str(value)


def bounded_reason(reason: str) -> str:
    """A failure's reason as stored: at most FAILURE_REASON_CHARS characters, valid UTF-8 (an
    undecodable byte of a file name in an error message becomes its escape, not a failed commit),
    without secrets (scrubbed before the cut: half a secret would no longer be recognised)."""
    reason = clipped(redact(str(reason)), FAILURE_REASON_CHARS)
    return reason.encode("utf-8", "backslashreplace").decode("utf-8")


def _pairs(metadata: dict[str, Any]) -> tuple[list[str], int]:
    """Field/value pairs as a flat list of strings (None left out), and how many pairs."""
    flat: list[str] = []
    append = flat.append
    for key, value in metadata.items():
        if value is not None:
            append(key)
            cls = value.__class__
            append(value if cls is str else str(value) if cls is int else _text(value))
    return flat, len(flat) // 2


def _sealed(cipher: FieldCipher, document_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` with the listed fields encrypted as they would be stored (lists as JSON text)."""
    encrypted = {name: cipher.encrypt_value(document_id, name, _text(metadata[name]))
                 for name in cipher.fields if metadata.get(name) is not None}
    return {**metadata, **encrypted} if encrypted else metadata


def _metadata_json(metadata: dict[str, Any]) -> str:
    return _to_json({k: _text(v) for k, v in metadata.items() if v is not None})


class ConnectorState:
    def __init__(self, client: redis.Redis, scripts: Scripts, prefix: str, connector: str, replicas_to_ack: int = 0):
        self.client = client
        self.scripts = scripts
        self.prefix = prefix
        self.connector = connector
        self.keys = ConnectorKeys(prefix, connector)
        self.replicas_to_ack = replicas_to_ack  # redis.replicas_to_ack: a commit is done once WAIT confirms it
        self._compactor: Compactor | None = None

    # ------------------------------------------------------------------ reads

    def cursor(self) -> str | None:
        value = self.client.get(self.keys.cursor)
        return value.decode() if value is not None else None

    def iter_known(self, after: str = "", page: int = KNOWN_PAGE) -> Iterator[tuple[str, str]]:
        """Every known native id > `after` in byte order, with its fingerprint; one trip per page.

        The next page is asked for, on a thread, as soon as this one has arrived: Redis builds it
        on the other core while the caller works through this one. Waiting for each page in turn
        was 0.13 s of a 0.7 s no-change rescan of 100,000 files (bench/fs). Ids the caller's own
        commits add or remove meanwhile lie at or before its position in the order, never in a
        page not yet read, so reading ahead changes nothing it sees.
        """
        from concurrent.futures import ThreadPoolExecutor

        keys = [self.keys.known]

        def fetch(lower: str) -> list[bytes]:
            return self.scripts.list_known(keys=keys, args=[lower, page])

        def pairs(flat: list[bytes]) -> Iterator[tuple[str, str]]:
            for i in range(0, len(flat), 2):
                yield flat[i].decode("utf-8", "surrogateescape"), flat[i + 1].decode()

        flat = fetch(after)
        if len(flat) < 2 * page:  # one page holds everything: no thread
            yield from pairs(flat)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="known-pages") as pool:
            while len(flat) >= 2 * page:  # a full page: there may be more
                ahead = pool.submit(fetch, flat[-2].decode("utf-8", "surrogateescape"))
                yield from pairs(flat)
                flat = ahead.result()
            yield from pairs(flat)  # the last page, short or empty

    def versions(self, native_ids: Sequence[str]) -> list[str | None]:
        """The version last sent of each id (None: never sent, deleted, or reset since)."""
        if not native_ids:
            return []
        doc_prefix = self.keys.doc_prefix
        values = self.scripts.sent_versions(keys=[self.keys.known, *(doc_prefix + n for n in native_ids)],
                                            args=list(native_ids))
        return [v.decode() if v is not None else None for v in values]

    def known_count(self) -> int:
        return int(self.client.zcard(self.keys.known))

    def document_defaults(self) -> dict[str, str]:
        """The connector's defaults hash (docview.py): what its documents share."""
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.docdefaults).items()}

    def use_defaults(self, wanted: dict[str, str]) -> Compactor:
        """Compact this run's documents against the stored defaults and `wanted` (the run's department,
        source, priority, root, store); read once, under the lease."""
        self._compactor = Compactor(self.document_defaults(), wanted)
        return self._compactor

    def aux_get(self, name: str, fields: Sequence[str]) -> list[str | None]:
        if not fields:
            return []
        return [v.decode() if v is not None else None for v in self.client.hmget(self.keys.aux(name), list(fields))]

    def aux_exists(self, name: str) -> bool:
        return bool(self.client.exists(self.keys.aux(name)))

    def aux_scan(self, name: str, count: int = 1000) -> Iterator[tuple[str, str]]:
        for field, value in self.client.hscan_iter(self.keys.aux(name), count=count):
            yield field.decode(), value.decode()

    def stats(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.stats).items()}

    # ------------------------------------------------------------------ writes

    def commit(self, batch: Batch, **options: Any) -> CommitResult:
        """Apply one batch atomically (see lua/commit_batch.lua); options as for `prepare`."""
        return self.execute(self.prepare(batch, **options))

    def prepare(
        self,
        batch: Batch,
        *,
        target: QueueTarget,
        celery: CeleryMessages | None,
        lease_token: str = "",
        now: str | None = None,
        common: dict[str, str] | None = None,
        fields: FieldCipher | None = None,
        commits_before: int | None = None,
    ) -> PreparedCommit:
        """The script's arguments for one batch (no I/O: can run while another batch executes).

        `common`: fields every upserted document of the run carries (department, source, priority),
        overriding the document's own. The doc hashes store the compact form (docview.py); the queue
        messages carry the full metadata.
        `fields`: the doc-hash fields to encrypt (`encryption.encrypt_fields`). This is where every
        document's metadata leaves for Redis, into its hash and, in the list and stream formats,
        into its queue item: encrypted here, they are in clear in neither.
        `commits_before`: how many commits the lease holder made before this one, so the script can
        tell a replay from commits Redis lost in a failover (None: not checked).
        """
        keys = self.keys
        compactor = self._compactor or self.use_defaults(common or {})
        now = now or utc_now()
        doc_key_prefix = keys.doc_prefix
        args: list[str] = [lease_token, "0" if batch.cursor is None else "1", batch.cursor or "", target.format,
                           target.side, now, self.connector, str(len(batch.changes)), str(len(batch.aux))]
        defaults_at = len(args)
        args.append("")  # the defaults the batch relies on: known once its documents are compacted
        args += (str(len(batch.failures)), str(FAILED_DOCUMENTS_KEPT),
                 "" if commits_before is None or not lease_token else str(commits_before))
        if target.format != "celery":
            celery = None
            args += ("", "", "", "")
        elif celery is None:  # the script would push empty messages
            raise ValueError("a celery queue needs its CeleryMessages (the message templates)")
        else:
            args += (*celery.templates, *celery.batch_ids())
        doc_keys: list[str] = []
        append = args.append
        join = "\0".join
        compact = compactor.compact_for_run(common) if common else compactor.compact
        for change in batch.changes:
            native = change.native_id
            if "\0" in native:
                raise ValueError(f"a native id holds a NUL character: {native!r}")
            doc_keys.append(doc_key_prefix + native)
            is_upsert = change.__class__ is Upsert
            if not is_upsert and not isinstance(change, Delete):
                raise TypeError(f"not a change: {change!r}")
            metadata = change.metadata
            if fields is not None:
                metadata = _sealed(fields, self.connector + ":" + native, metadata)
            if celery is not None:
                tail = celery_tail(self.connector + ":" + native)
            else:
                tail = _metadata_json({**metadata, **common} if common and is_upsert else metadata)
            if is_upsert:
                metadata, same = compact(native, metadata, change.version)
                head = f"u\0{native}\0{change.version}\0{change.fingerprint}\0{'s' if same else ''}"
            else:  # a deletion's hash keeps what it held: nothing of the metadata is written
                metadata, head = {}, f"d\0{native}\0\0\0"
            packed = join(chain.from_iterable(metadata.items()))  # compact() gives strings only
            pairs = len(metadata)
            # Header and pairs in one argument, the tail in a second one: every argument costs to
            # pack and send, and cutting a long tail out of a longer string costs Lua a copy (the
            # pairs travel separately only when a field or value holds a NUL itself).
            if pairs and packed.count("\0") != 2 * pairs - 1:  # a NUL inside a field or value
                flat, pairs = _pairs(metadata)
                append(f"{head}{pairs}")
                args += flat
            else:
                append(f"{head}p{pairs}\0{packed}" if pairs else f"{head}p0")
            append(tail)
        relied = compactor.relied_on()
        if any("\0" in text for pair in relied for text in pair):
            raise ValueError("document defaults must not contain NUL characters")
        args[defaults_at] = join(chain.from_iterable(relied))
        aux_names: dict[str, int] = {}
        for write in batch.aux:
            index = aux_names.setdefault(keys.aux(write.key), len(aux_names) + 1)
            if write.field is None:
                args += ("del", str(index), "", "")
            elif write.value is None:
                args += ("hdel", str(index), write.field, "")
            else:
                args += ("hset", str(index), write.field, write.value)
        for failure in batch.failures:
            args += (failure.native_id or "", bounded_reason(failure.error))
        all_keys = [keys.known, keys.docdefaults, keys.cursor, keys.lease, keys.stats,
                    target.key, keys.auxkeys, keys.failures, *doc_keys, *aux_names]
        return PreparedCommit(all_keys, args)

    def execute(self, prepared: PreparedCommit) -> CommitResult:
        """Run the commit script; with redis.replicas_to_ack, return only once WAIT confirms it."""
        try:
            reply = run_replicated(
                self.client, lambda client: self.scripts.commit_batch(keys=prepared.keys, args=prepared.args,
                                                                      client=client),
                self.replicas_to_ack)
        except redis.ResponseError as exc:
            if str(exc).startswith("LEASE_LOST"):
                raise LeaseLost(f"lease of {self.connector} was lost ({exc})") from None
            if str(exc).startswith("COMMITS_LOST"):
                _, held, expected = str(exc).split()[:3]
                raise CommitsLost(
                    f"Redis no longer holds {int(expected) - int(held)} commit(s) of this run of {self.connector} that "
                    "it had acknowledged (a failover to a replica that had not received them); the run stops and "
                    "the next run redoes them (redis.replicas_to_ack > 0 prevents the loss)") from None
            if str(exc).startswith("DEFAULTS_CHANGED"):
                self._compactor = None  # read again by the next run
                raise DefaultsChanged(f"{self.connector}: a document default changed under this run ({exc}), "
                                      "nothing of the batch was written; the next run redoes it") from None
            if is_out_of_memory(exc):  # the script wrote nothing: the batch is redone on the next run
                raise refusal(exc, "commit", self.client) from None
            raise
        return CommitResult(*(int(x) for x in reply))

    def declare_queue(self, target: QueueTarget) -> None:
        """What a Celery client does once per queue: record the kombu binding; also list us for status."""
        pipe = self.client.pipeline(transaction=False)
        for key in target.binding_keys:
            pipe.sadd(key, target.binding_member)
        pipe.sadd(connectors_set(self.prefix), self.connector)
        pipe.execute()

    def record_run(self, fields: dict[str, Any]) -> None:
        """Write run statistics (last_error among them: no secret, whatever a server answered)."""
        self.client.hset(self.keys.stats, mapping={k: ("" if v is None else redact(str(v))) for k, v in fields.items()})

    def reset(self, lease_token: str = "") -> int:
        aux = [m.decode() for m in self.client.smembers(self.keys.auxkeys)]
        k = self.keys
        try:
            return int(self.scripts.reset_connector(
                keys=[k.lease, k.known, k.cursor, k.auxkeys, k.failures, *k.legacy_state, *aux],
                args=[lease_token]))
        except redis.ResponseError as exc:
            if str(exc).startswith("LEASE_HELD"):
                raise LeaseLost(f"{self.connector} is being synced right now ({exc}); try again later") from None
            raise
