"""One sync of one connector: lease, batches in, atomic commits out, stats and events at the end."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from kmrl_sync.config.models import Config, ConnectorConfig
from kmrl_sync.content import open_store
from kmrl_sync.content.store import BlobWriteError
from kmrl_sync.engine.committer import BackgroundCommitter, InlineCommitter
from kmrl_sync.engine.connection import TRANSIENT_ERRORS, NotReplicated, connect_config, retrying
from kmrl_sync.engine.connector import Connector, ConnectorContext, ConnectorError
from kmrl_sync.engine.documents import Batch
from kmrl_sync.engine.docview import BLOB, ROOT
from kmrl_sync.engine.keys import events_channel
from kmrl_sync.engine.lease import Lease
from kmrl_sync.engine.memory import RedisOutOfMemory, is_out_of_memory, refusal
from kmrl_sync.engine.migration import migrate
from kmrl_sync.engine.queues import CeleryMessages, queue_target
from kmrl_sync.engine.registry import load_connector_type
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import (
    CommitResult,
    CommitsLost,
    ConnectorState,
    DefaultsChanged,
    LeaseLost,
    PreparedCommit,
    bounded_reason,
    utc_now,
)
from kmrl_sync.logs import structlog
from kmrl_sync.redaction import redact_value

if TYPE_CHECKING:
    from kmrl_sync.content.crypto import Ciphers

ProgressCallback = Callable[[str, "RunSummary", int | None], None]


@dataclass
class RunSummary:
    connector: str
    run_id: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    result: str = "ok"  # ok | partial (some documents failed) | failed | interrupted
    error: str | None = None
    failures: list[str] = field(default_factory=list)  # first few, for the summary

    @property
    def queued(self) -> int:
        return self.created + self.updated + self.deleted

    def counts(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("created", "updated", "deleted", "unchanged", "failed")}


MAX_FAILURES_KEPT = 20


class Engine:
    """What one process shares across runs: config, Redis client, scripts, blob store."""

    def __init__(self, config: Config, client: redis.Redis | None = None):
        self.config = config
        self.client = client or connect_config(config)
        self.scripts = Scripts.register(self.client)
        self.ciphers: Ciphers | None = None
        if config.encryption is not None:  # PyNaCl is imported only where it is used
            from kmrl_sync.content.crypto import load_ciphers

            self.ciphers = load_ciphers(config.encryption.key_file, config.encryption.encrypt_fields)
        self.blobs = open_store(config.blobs, self.ciphers.content if self.ciphers is not None else None)
        self.host = socket.gethostname()
        self.log = structlog.get_logger("kmrl_sync")

    def state(self, name: str) -> ConnectorState:
        return ConnectorState(self.client, self.scripts, self.config.key_prefix, name,
                              replicas_to_ack=self.config.replicas_to_ack)

    def publish(self, event: str, **fields: Any) -> None:
        message = redact_value({"event": event, "host": self.host, "pid": os.getpid(), "at": utc_now(), **fields})
        try:
            self.client.publish(events_channel(self.config.key_prefix), json.dumps(message))
        except redis.RedisError as exc:  # events are a notification, never a reason to fail a run
            self.log.warning("could not publish event", event_name=event, error=str(exc))

    def make_connector(self, cfg: ConnectorConfig, state: ConnectorState, should_stop: Callable[[], bool]) -> Connector:
        connector_type = load_connector_type(cfg.type)
        context = ConnectorContext(
            name=cfg.name, config=cfg, state=state, blobs=self.blobs,
            log=self.log.bind(connector=cfg.name), should_stop=should_stop,
        )
        return connector_type(context)

    def run(
        self,
        name: str,
        *,
        full: bool = False,
        wait: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: ProgressCallback | None = None,
        pause: Callable[[float], object] = time.sleep,
    ) -> RunSummary:
        """Sync `name` once. Waiting for a busy lease, `pause(seconds)` sleeps between attempts:
        give it a stop flag's wait so that a stop ends the wait at once (LeaseWaitStopped)."""
        cfg = self.config.connectors[name]
        run_id = uuid.uuid4().hex[:12]
        summary = RunSummary(connector=name, run_id=run_id)
        log = self.log.bind(connector=name, run_id=run_id)
        state = self.state(name)
        lease = Lease(self.client, self.scripts, state.keys, self.config.daemon.lease_ttl, run_id)
        try:
            lease.acquire(wait=self.config.daemon.lease_ttl if wait is None else wait, should_stop=should_stop,
                          pause=pause)
        except redis.ResponseError as exc:
            if not is_out_of_memory(exc):
                raise
            # Nothing was written and nothing can be: report it like any failed run (no stats).
            summary.result, summary.error = "failed", str(refusal(exc, "taking the lease", self.client))
            log.error("sync failed", error=summary.error)
            return summary
        started = time.monotonic()
        started_at = utc_now()
        target = queue_target(cfg.queue, cfg.priority, state.keys)
        celery = CeleryMessages(cfg.queue, cfg.priority) if target.format == "celery" else None
        common = {"department": cfg.department, "source": cfg.type, "priority": cfg.priority}
        connector: Connector | None = None
        memory_refused = False
        field_cipher = self.ciphers.fields if self.ciphers is not None and self.ciphers.fields.fields else None
        try:
            retrying(lambda: state.declare_queue(target), log=log)
            state.record_run({"running": "1", "current_run_id": run_id, "current_host": self.host,
                              "current_pid": os.getpid(), "last_run_started": started_at})
            self.publish("run_started", connector=name, run_id=run_id, full=full)
            log.info("sync started", full=full)
            connector = self.make_connector(cfg, state, lambda: should_stop() or lease.lost.is_set())
            wanted = {**common, BLOB: self.blobs.uri_base}
            root = connector.document_root()
            if root is not None:
                wanted[ROOT] = root
            compactor = retrying(lambda: state.use_defaults(wanted), log=log)
            moved = retrying(lambda: migrate(state, compactor), log=log)
            if moved:
                log.info("document hashes migrated to the current layout", documents=moved)
            cursor = None if full else retrying(state.cursor, log=log)
            batches = connector.sync(cursor, full=full)

            pipelined = connector.pipelined_commits
            prepared_count = 0  # batches are prepared, and committed, strictly in order

            def prepare(batch: Batch) -> PreparedCommit:
                nonlocal prepared_count
                prepared_count += 1
                return state.prepare(batch, target=target, celery=celery, lease_token=lease.token, common=common,
                                     fields=field_cipher, commits_before=prepared_count - 1)

            def commit(prepared: PreparedCommit) -> CommitResult:
                self.blobs.flush()  # content must be durable before the commit that points at it
                return retrying(lambda: state.execute(prepared), log=log)

            def committed(batch: Batch, result: CommitResult) -> None:
                summary.created += result.created
                summary.updated += result.updated
                summary.deleted += result.deleted
                summary.unchanged += result.unchanged
                if progress is not None:
                    progress(name, summary, batch.progress_total)

            committer_type = BackgroundCommitter if pipelined else InlineCommitter
            committer = committer_type(prepare, commit, committed)
            connector.context.wait_committed = committer.drain
            try:
                for batch in batches:
                    self._account(batch, summary, log)
                    if batch.changes or batch.cursor is not None or batch.aux or batch.failures:
                        committer.submit(batch)
                    elif progress is not None:
                        progress(name, summary, batch.progress_total)
                    if lease.lost.is_set():
                        raise LeaseLost(f"lease of {name} expired mid-run and was taken over")
                    if should_stop():
                        summary.result = "interrupted"
                        break
                committer.drain()
            finally:
                committer.close()
                batches.close()
        # BlobWriteError: the store is full or unwritable; the batch needing it is not committed
        except (ConnectorError, LeaseLost, CommitsLost, DefaultsChanged, BlobWriteError) as exc:
            summary.result, summary.error = "failed", str(exc)
        except RedisOutOfMemory as exc:  # a commit refused whole: redone by the first run that fits
            memory_refused = True
            summary.result, summary.error = "failed", str(exc)
        except NotReplicated as exc:
            summary.result, summary.error = "failed", f"Redis replicas did not confirm a commit: {exc}"
        except TRANSIENT_ERRORS as exc:
            summary.result, summary.error = "failed", f"Redis unavailable: {exc}"
        except Exception as exc:  # a connector bug must not take the daemon down; it is reported
            if is_out_of_memory(exc):  # any other write of the run (queue binding, stats)
                memory_refused = True
                summary.result, summary.error = "failed", str(refusal(exc, "write", self.client))
            else:
                log.exception("sync crashed")
                summary.result, summary.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            if connector is not None:
                try:
                    connector.close()
                except Exception:
                    log.exception("connector close failed")
            summary.seconds = round(time.monotonic() - started, 3)
            if summary.result == "ok" and summary.failed:
                summary.result = "partial"
            self._record_end(state, summary, started_at, log, memory_refused=memory_refused)
            lease.release()
        if summary.error:
            log.error("sync failed", error=summary.error, **summary.counts(), seconds=summary.seconds)
        else:
            log.info("sync finished", result=summary.result, **summary.counts(), seconds=summary.seconds)
        return summary

    @staticmethod
    def _account(batch: Batch, summary: RunSummary, log: Any) -> None:
        """Count what the connector reported (the commit adds the instance-wide metadata)."""
        summary.unchanged += batch.unchanged
        for failure in batch.failures:
            summary.failed += 1
            doc = f"{summary.connector}:{failure.native_id}" if failure.native_id else summary.connector
            log.warning("document failed", document=doc, error=failure.error)
            if len(summary.failures) < MAX_FAILURES_KEPT:
                summary.failures.append(f"{doc}: {failure.error}")

    def _record_end(self, state: ConnectorState, summary: RunSummary, started_at: str, log: Any,
                    memory_refused: bool = False) -> None:
        """Record the run in the stats hash; never raises (Redis may refuse this write too).

        `memory_refused_at` tells `health` that Redis refused this connector's commit for lack of
        memory even when Redis is below its limit now (the batch would not have fit); a run that
        completes clears it.
        """
        now = utc_now()
        # kept in Redis and published: bounded like a failure's reason (it may be a server's text)
        error = bounded_reason(summary.error or (summary.failures[0] if summary.failures else ""))
        fields: dict[str, Any] = {
            "running": "0", "current_run_id": "", "current_host": "", "current_pid": "",
            "last_run_id": summary.run_id, "last_run_host": self.host, "last_run_started": started_at,
            "last_run_finished": now, "last_run_result": summary.result, "last_run_seconds": summary.seconds,
            "last_error": error,
            **{f"last_run_{k}": v for k, v in summary.counts().items()},
        }
        if summary.result in ("ok", "partial"):
            fields["last_success"] = now
            fields["failing_since"] = ""
            fields["memory_refused_at"] = ""
        elif memory_refused:
            fields["memory_refused_at"] = now
        try:
            if summary.result == "failed" and not state.client.hget(state.keys.stats, "failing_since"):
                fields["failing_since"] = now
            state.record_run(fields)
        except redis.RedisError as exc:  # e.g. out of memory: the run's own error is logged after this
            log.warning("could not record run stats", error=str(exc))
        event = "run_failed" if summary.result == "failed" else "run_finished"
        self.publish(event, connector=summary.connector, run_id=summary.run_id, result=summary.result,
                     counts=summary.counts(), seconds=summary.seconds,
                     error=None if summary.error is None else bounded_reason(summary.error))


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    return asdict(summary)
