"""The fast readers of the mail and size fetches' answers give imapclient's result, or decline."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from imapclient.datetime_util import parse_to_datetime
from imapclient.response_parser import parse_fetch_response

from kmrl_sync.connectors.imap import fetched


def _answer(*mails: tuple[int, int, str, bytes]) -> list[object]:
    """imaplib's FETCH data for mails given as (seq, uid, INTERNALDATE, content)."""
    data: list[object] = []
    for seq, uid, date, content in mails:
        head = f'{seq} (UID {uid} INTERNALDATE "{date}" BODY[] {{{len(content)}}}'.encode()
        data += [(head, content), b")"]
    return data


def _as_imapclient_reads(data: list[object]) -> dict[int, dict[bytes, object]]:
    """imapclient's parse, with INTERNALDATE in UTC as the syncer uses it."""
    parsed = parse_fetch_response(data, normalise_times=False, uid_is_key=True)
    return {uid: {**item, b"INTERNALDATE": item[b"INTERNALDATE"].astimezone(UTC)} for uid, item in parsed.items()}


def test_the_usual_answer_reads_as_imapclient_reads_it() -> None:
    data = _answer(
        (1, 10, "27-Nov-2026 17:20:08 +0000", b"Subject: a\r\n\r\nbody\r\n"),
        (2, 11, " 3-Feb-2025 09:05:59 +0530", b""),  # space-padded day, an empty mail
        (3, 15, "31-Dec-1999 23:59:59 -0800", b"x" * 70_000),  # crosses midnight into 2000 in UTC
    )
    found = fetched.mails(data)
    assert found == _as_imapclient_reads(data)
    assert found[15][b"INTERNALDATE"] == datetime(2000, 1, 1, 7, 59, 59, tzinfo=UTC)
    assert fetched.mails([]) == {}


@pytest.mark.parametrize("data", [
    # another order of the items, or more of them
    [(b'1 (UID 10 BODY[] {3}', b"abc"), b' INTERNALDATE "27-Nov-2026 17:20:08 +0000")'],
    [(b'1 (UID 10 INTERNALDATE "27-Nov-2026 17:20:08 +0000" BODY[] {3}', b"abc"), b" FLAGS (\\Seen))"],
    # an unsolicited update of another message among the answers
    [(b'1 (UID 10 INTERNALDATE "27-Nov-2026 17:20:08 +0000" BODY[] {3}', b"abc"), b")",
     b"7 (FLAGS (\\Seen))"],
    # no body at all
    [b'1 (UID 10 INTERNALDATE "27-Nov-2026 17:20:08 +0000" BODY[] NIL)'],
])
def test_any_other_shape_is_left_to_imapclient(data) -> None:
    assert fetched.mails(data) is None
    parse_fetch_response(data, normalise_times=False, uid_is_key=True)  # which reads it


@pytest.mark.parametrize("date", ["27-Nov-2026 17:20:08", "27-Nov-2026 17:20:08 +00", "27-Foo-2026 17:20:08 +0000",
                                  "31-Feb-2026 17:20:08 +0000", "27-nov-2026 17:20:08 +0000", "2026-11-27T17:20:08Z"])
def test_a_date_that_does_not_read_exactly_declines_the_whole_answer(date) -> None:
    assert fetched.internal_date(date.encode()) is None
    data = _answer((1, 10, "27-Nov-2026 17:20:08 +0000", b"a"), (2, 11, date, b"b"))
    assert fetched.mails(data) is None


def test_a_literal_of_another_length_than_announced_declines() -> None:
    (head, _content), close = _answer((1, 10, "27-Nov-2026 17:20:08 +0000", b"abc"))
    assert fetched.mails([(head, b"ab"), close]) is None


def test_internal_dates_are_the_instants_imapclient_reads() -> None:
    rng = random.Random(7)
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    for _ in range(2000):
        day = rng.randint(1, 28)
        text = (f"{day:2d}" if rng.random() < 0.5 else f"{day:02d}") + \
            f"-{rng.choice(months)}-{rng.randint(1970, 2100)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:" \
            f"{rng.randint(0, 59):02d} {rng.choice('+-')}{rng.randint(0, 14):02d}{rng.choice([0, 30, 45]):02d}"
        expected = parse_to_datetime(text.encode(), normalise=False).astimezone(UTC)
        assert fetched.internal_date(text.encode()) == expected, text


def test_sizes_read_as_imapclient_reads_them() -> None:
    rng = random.Random(11)
    data = [f"{seq} (UID {seq * 3 + rng.randint(0, 2)} RFC822.SIZE {rng.randint(0, 60_000_000)})".encode()
            for seq in range(1, 1001)]
    expected = parse_fetch_response(data, normalise_times=True, uid_is_key=True)
    assert fetched.sizes(data) == {uid: dict(item) for uid, item in expected.items()}
    assert fetched.sizes([]) == {}


@pytest.mark.parametrize("data", [
    [b"1 (RFC822.SIZE 10 UID 7)"],  # another order
    [b"1 (UID 7 RFC822.SIZE 10 FLAGS (\\Seen))"],  # more items
    [b"1 (UID 7 RFC822.SIZE 10)", b"3 (FLAGS (\\Seen))"],  # an unsolicited update among the answers
    [b"1 (UID 7 RFC822.SIZE NIL)"],
    [None],  # imaplib's "no FETCH answer at all"
])
def test_sizes_of_any_other_shape_are_left_to_imapclient(data) -> None:
    assert fetched.sizes(data) is None
    parse_fetch_response(data, normalise_times=True, uid_is_key=True)  # which reads it
