"""Connecting while the process is still starting up (see `Connector.start_early`).

A one-shot `kmrl-sync sync` spends about 70 ms importing and connecting to Redis after its
configuration is loaded. Connecting to the IMAP server, logging in, and asking the first folder's
STATUS and EXAMINE are round trips the server answers meanwhile (20 to 60 ms here, more on a real
network). All of it is read-only, so it may happen before the run holds its lease.

The blob helper process (blob_helper.py) is started here too: its own start-up (an interpreter,
~10 ms of CPU) then runs on the core this process leaves idle while it imports, instead of beside
Dovecot and Redis once mail is being fetched (bench/imap: 500 new mails, -5 to -10 ms). A run with
nothing new leaves it unused; `close()` stops it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kmrl_sync.blob_helper import HelperBlobWriter
    from kmrl_sync.connectors.imap.client import ImapSession
    from kmrl_sync.connectors.imap.options import ImapOptions

UNUSED_JOIN_SECONDS = 1.0  # how long an unused early session may delay the command's exit
FRESH_SECONDS = 5.0  # older early answers (a run that waited for its lease) are asked again


class EarlySession:
    def __init__(self, options: ImapOptions, blobs_dir: Path):
        self.options = options
        self._session: ImapSession | None = None
        self._refused: Exception | None = None  # the server's NO to our login: the run's answer too
        self._asked_at = 0.0
        self._taken = False
        self._thread = threading.Thread(target=self._connect, name="imap-early", daemon=True)
        self._thread.start()
        from kmrl_sync.blob_helper import HelperBlobWriter
        from kmrl_sync.blobs import BlobStore

        # the run's store does not exist yet: the writer adopts it (pipeline.open_blob_writer)
        self._writer: HelperBlobWriter | None = HelperBlobWriter(BlobStore(blobs_dir), fallback=_not_adopted)

    def _connect(self) -> None:
        from kmrl_sync.connectors.imap.client import ImapSession, LoginRefused

        session = ImapSession(self.options, attempts=1)  # a failure is the run's to retry and report
        try:
            session.connect()
            folders = self.options.folders
            if folders and "*" not in folders:  # with "*", the folders are known after LIST only
                session.ask_early(folders[0])
                self._asked_at = time.monotonic()
        except LoginRefused as exc:  # not asked twice: a wrong password retried gets accounts locked
            self._refused = exc
            session.close()
            return
        except Exception:
            session.close()
            return
        self._session = session

    def take(self, log: Any) -> ImapSession | None:
        """The connected session (the run's from now on), or None: then the run connects itself."""
        self._thread.join()
        session, self._session = self._session, None
        self._taken = True
        if self._refused is not None:
            raise self._refused
        if session is not None:
            session.adopt(log)
            if time.monotonic() - self._asked_at > FRESH_SECONDS:
                session.forget_early()
        return session

    def take_writer(self) -> HelperBlobWriter | None:
        """The blob helper started for this run (once), or None."""
        writer, self._writer = self._writer, None
        return writer

    def close(self) -> None:
        """For a run that did not take it (lease busy, a failure before connecting, no new mail)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._taken:
            return
        self._thread.join(UNUSED_JOIN_SECONDS)
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _not_adopted() -> Any:
    raise AssertionError("an early blob writer is used only once a run's store adopted it")
