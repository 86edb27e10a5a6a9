"""The one place kmrl-sync reaches into imapclient's internals. The suite runs it on both ends of
the range pyproject.toml allows: the newest release in .venv (4.1.0 today), and the lowest (3.0.0),
which `scripts/bootstrap test` installs beside it for tests/integration/test_imapclient_lowest.py.

`IMAPClient.__init__` sets the debug level of the imaplib connection it wraps (its private
`_imap`) to 5 and routes imaplib's messages to the `imapclient.imaplib` logger. At that level
imaplib builds a `repr()` of every response it receives, the whole of every fetched mail
included, before the logger drops it. imapclient offers no setting for it.

Measured on bench/imap (2026-12-07, 10,000 mails, 330 MB, tmpfs): the initial sync took 56 % more
CPU (6.85 s against 4.39 s) and 34 % more wall time with that formatting left on. imaplib's
`debug` attribute itself is public and documented; only the way to it is not.

If a future imapclient renames `_imap`, `quiet_imaplib` does nothing (the sync stays correct,
only slower); `tests/integration/test_imap_resilience.py` checks that it still takes effect.
pyproject.toml bounds imapclient from above, so an upgrade is tested before it is allowed.
"""

from __future__ import annotations

import logging

import imapclient


def quiet_imaplib(client: imapclient.IMAPClient) -> None:
    """Stop imaplib formatting every response for a debug log nobody reads.

    The protocol trace stays available: enable DEBUG on the `imapclient.imaplib` logger.
    """
    if logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        return
    imap = getattr(client, "_imap", None)
    if imap is not None and hasattr(imap, "debug"):
        imap.debug = 0


def imaplib_debug_level(client: imapclient.IMAPClient) -> int | None:
    """The wrapped imaplib connection's debug level (for the test that checks `quiet_imaplib`)."""
    imap = getattr(client, "_imap", None)
    return getattr(imap, "debug", None)
