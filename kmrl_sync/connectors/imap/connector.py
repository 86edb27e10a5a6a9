"""The `imap` connector type: every mail of the configured folders, once, with its attachments.

The heavy modules (imapclient, the MIME parser, html2text) are imported only when a sync or a
watch starts, so loading a config that mentions an `imap` connector stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from kmrl_sync.connectors.imap.options import ImapOptions
from kmrl_sync.engine.connector import Connector, ConnectorContext
from kmrl_sync.engine.documents import Batch

if TYPE_CHECKING:
    from kmrl_sync.connectors.imap.client import ImapSession


class ImapConnector(Connector):
    Options = ImapOptions
    description = "mail folders over IMAP (UID-exact, attachments as documents, IDLE watch optional)"
    supports_watch = True
    pipelined_commits = True  # the syncer reads through AuxView, which waits where it must

    options: ImapOptions

    def __init__(self, context: ConnectorContext):
        super().__init__(context)
        self._session: ImapSession | None = None

    def _open(self) -> ImapSession:
        from kmrl_sync.connectors.imap.client import ImapSession

        self.close()
        self._session = ImapSession(self.options, self.log).connect()
        return self._session

    def check_connection(self) -> None:
        self._open()
        self.close()

    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        from kmrl_sync.connectors.imap.syncer import MailboxSync

        session = self._open()
        yield from MailboxSync(self.context, self.options, session, full).run()

    def watch_enabled(self) -> bool:
        return self.options.idle_folder is not None

    def watch(self, notify: Callable[..., None], stop: threading.Event) -> None:
        from kmrl_sync.connectors.imap.idle import idle_watch

        idle_watch(self.options, self.options.idle_folder or "INBOX", notify, stop, self.log)

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()
