"""How the syncer cuts new UIDs into FETCH chunks, including when the server cannot give sizes."""

from __future__ import annotations

from types import SimpleNamespace

from kmrl_sync.connectors.imap import syncer
from kmrl_sync.connectors.imap.client import CommandAborted
from kmrl_sync.connectors.imap.options import ImapOptions


class _Session:
    """The one command `_plan` sends: RFC822.SIZE of a window of UIDs."""

    def __init__(self, sizes: dict[int, int] | None):
        self.sizes = sizes
        self.asked: list[list[int]] = []

    def fetch_sizes(self, uids: list[int]) -> dict[int, dict[bytes, int]]:
        self.asked.append(uids)
        if self.sizes is None:
            raise CommandAborted("BYE Internal error occurred")
        return {u: {b"RFC822.SIZE": self.sizes[u]} for u in uids if u in self.sizes}


def _plan(session: _Session, uids: list[int], batch_size: int = 4) -> list[list[int]]:
    options = ImapOptions(host="mail.example.org", username="u", password="p", batch_size=batch_size)
    context = SimpleNamespace(state=None, log=None, wait_committed=lambda: None)
    return list(syncer.MailboxSync(context, options, session, full=False)._plan(uids))


def test_chunks_are_bounded_by_count_and_bytes_and_skip_expunged_mails() -> None:
    mb = 1 << 20
    sizes = {1: 10, 2: 10, 3: 2 * mb, 5: 10, 6: 10, 7: 10, 8: 10, 9: 10, 10: 3 * mb, 11: 2 * mb}  # 4 is gone
    chunks = _plan(_Session(sizes), list(range(1, 12)))
    # the first chunk is a quarter of the byte bound; then up to 4 mails or 4 MB each
    assert chunks == [[1, 2], [3, 5, 6, 7], [8, 9, 10], [11]]


def test_without_sizes_the_chunks_are_cut_by_count_alone() -> None:
    session = _Session(None)
    assert _plan(session, list(range(1, 11))) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert session.asked == [list(range(1, 11))]
