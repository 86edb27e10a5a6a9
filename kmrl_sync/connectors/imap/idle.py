"""IMAP IDLE watcher: tell the daemon a folder changed, as soon as the server says so.

Runs in a thread of the daemon. It keeps one connection idling on the folder, polls it with short
`idle_check` timeouts so a `stop` request is honoured within half a second, re-issues IDLE well
before the 29-minute limit of RFC 2177 (servers drop idlers after 30), and reconnects with capped
exponential backoff when the connection drops. After each reconnect it notifies once, because mail
may have arrived while it was away.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from kmrl_sync.connectors.imap.client import ImapSession
from kmrl_sync.connectors.imap.options import ImapOptions
from kmrl_sync.engine.connector import ConnectorError

CHECK_SECONDS = 0.5  # longest wait for a server push before looking at `stop` again
RENEW_SECONDS = 25 * 60  # re-issue IDLE before RFC 2177's 29 minutes
MAX_BACKOFF = 60.0
CHANGES = (b"EXISTS", b"EXPUNGE")


def _changed(responses: list[Any]) -> bool:
    return any(len(item) >= 2 and isinstance(item[1], bytes) and item[1].upper() in CHANGES for item in responses)


def _bye(responses: list[Any]) -> bool:
    return any(item and item[0] == b"BYE" for item in responses)


class ServerSaidBye(Exception):
    pass


def idle_watch(options: ImapOptions, folder: str, notify: Callable[..., None], stop: threading.Event,
               log: Any, *, renew_seconds: float = RENEW_SECONDS) -> None:
    backoff = 1.0
    first = True
    while not stop.is_set():
        session = ImapSession(options, log, attempts=1)
        try:
            session.connect()
            session.select(folder)
            client = session.client
            assert client is not None
            client.idle()
            if not first:
                notify(settled=True)  # anything that arrived while we were reconnecting
            first = False
            backoff = 1.0
            started = time.monotonic()
            log.info("idle watch started", folder=folder)
            while not stop.is_set():
                responses = client.idle_check(timeout=CHECK_SECONDS)
                if _bye(responses):
                    raise ServerSaidBye(str(responses))
                if _changed(responses):
                    notify(settled=True)  # a mail the server announces is there, whole
                if time.monotonic() - started > renew_seconds:
                    client.idle_done()
                    client.idle()
                    started = time.monotonic()
            with contextlib.suppress(Exception):
                client.idle_done()
        except ConnectorError as exc:  # login refused, bad TLS: retry slowly, never a storm
            log.error("idle watch cannot connect", folder=folder, error=str(exc))
            backoff = MAX_BACKOFF
            first = False
        except Exception as exc:
            log.warning("idle connection lost; reconnecting", folder=folder, error=str(exc) or type(exc).__name__,
                        retry_in=backoff)
            first = False
        finally:
            session.close()
        if stop.wait(backoff):
            return
        backoff = min(backoff * 2, MAX_BACKOFF)
