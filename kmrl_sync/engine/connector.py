"""The connector contract: the one base class every connector type derives from, built-in or
third-party, and what the engine hands it (ConnectorContext) and catches from it (ConnectorError).

In the engine because the engine runs connectors through it: the types (connectors/) import the
engine, never the other way round.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from kmrl_sync.engine.documents import Batch
from kmrl_sync.redaction import redact

if TYPE_CHECKING:
    from kmrl_sync.config.models import ConnectorConfig
    from kmrl_sync.content.store import ContentStore
    from kmrl_sync.engine.state import ConnectorState


class ConnectorError(Exception):
    """The whole run cannot proceed (source unreachable, authentication refused, ...).

    The message must name what is wrong in operator terms; it must never contain a secret, and
    cannot: what a server answered is often part of it, so every registered secret is scrubbed
    from it here (kmrl_sync.redaction).
    """

    def __init__(self, *args: Any):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


@dataclass
class ConnectorContext:
    name: str
    config: ConnectorConfig
    state: ConnectorState  # read it (known ids, versions, aux keys); never write: batches do that
    blobs: ContentStore
    log: Any
    should_stop: Callable[[], bool]  # True after the first SIGTERM: end the current batch, then return
    #: Returns once every batch yielded so far is committed (at once when none is in flight), and
    #: raises what a failed commit raised: let it propagate. Only needed with `pipelined_commits`.
    #: The engine sets it.
    wait_committed: Callable[[], None] = lambda: None


class Connector(ABC):
    """A source of documents.

    `sync` is a generator: it yields batches (at most `documents.BATCH_LIMIT` changes each) and
    each batch carries the cursor to resume from once it is committed. By default the engine
    commits a batch before resuming the generator, so code after a `yield` may assume the batch
    is durable; a type can let the engine overlap commits with its work (`pipelined_commits`).
    A connector keeps no more than a batch or a page of its source in memory.
    """

    #: pydantic model of the `options:` mapping; unknown keys must be refused (extra="forbid").
    Options: ClassVar[type[BaseModel]]
    #: one line for `kmrl-sync connectors`
    description: ClassVar[str] = ""

    def __init__(self, context: ConnectorContext):
        self.context = context
        self.options = context.config.options
        self.log = context.log

    @abstractmethod
    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        """Yield the changes since `cursor` (None: everything); with `full`, distrust shortcuts."""

    def check_connection(self) -> None:  # noqa: B027 - optional hook
        """Reach the source (for `kmrl-sync check --connect`); raise ConnectorError if impossible."""

    #: Let the engine commit each batch in the background while the generator produces the next.
    #:
    #: What the engine keeps: batches are committed one at a time, in the order yielded, each in
    #: one atomic script as always; at most one is in flight, so when the generator resumes after
    #: yielding batch k, every batch before k is committed and k may not be yet; a failed commit
    #: fails the run, and a run that stops or fails resumes from the last committed cursor, as
    #: without it. What the type must do: call `self.context.wait_committed()` before reading
    #: from Redis (`context.state`) anything a batch it yielded writes (its cursor, aux keys,
    #: versions, the index, document hashes), and not change a batch after yielding it. A type
    #: that only reads what no pending batch touches (the filesystem type: ids ahead of its merge
    #: join) never needs to wait. tests/integration/test_connector_contract.py holds every
    #: built-in type to this, with commits held back until the type has moved on.
    #:
    #: Worth it when a core is free for Redis while the type works: in the filesystem initial
    #: sync Redis spends 0.9 s of CPU against the type's 1.7 s (30,000 files), which overlapping
    #: takes off the critical path (1.46x slower without it, 100,000 files, quiet A/B of
    #: 2026-12-07); on a machine with no core to spare it gains nothing (bench/README.md,
    #: "Pipelined commits"). Engine side: committer.py.
    pipelined_commits: ClassVar[bool] = False

    #: True when `watch` is implemented (inotify, IMAP IDLE): the daemon then runs it in a thread.
    supports_watch: ClassVar[bool] = False

    def watch(self, notify: Callable[..., None], stop: threading.Event) -> None:
        """Block until `stop` is set, calling `notify()` whenever the source changed.

        The daemon answers `notify()` by scheduling a sync of this connector a moment later, so that
        a burst of changes (a file written, then renamed) makes one run; `notify(settled=True)` says
        the change is already whole (a mail the IMAP server announces), and the sync starts at once.
        Changes notified while a sync runs make one more run after it. The regular schedule keeps
        running as a safety net. Only called when
        `supports_watch` is True and the connector's options ask for it (`watch_enabled`).
        """
        raise NotImplementedError

    def watch_enabled(self) -> bool:
        """Whether this instance's options ask for watch mode (`watch: true`, `idle: true`)."""
        return False

    def document_root(self) -> str | None:
        """The absolute folder whose files are the documents, or None.

        Where a connector's native ids are paths relative to one folder (its `path`, with
        `absolute_path` = folder/id and `source_url` its file:// URL), Redis stores the folder once
        per connector instead of three paths per document (engine/docview.py).
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once after every run, also after failures."""
