"""A server's error text is data of any length: what kmrl-sync keeps of it is bounded."""

from __future__ import annotations

from botocore.exceptions import ClientError

from kmrl_sync.content.s3 import MAX_REASON_CHARS, unreachable
from kmrl_sync.display import clipped


def test_clipped_keeps_short_text_and_cuts_long_text_to_the_limit() -> None:
    assert clipped("short", 10) == "short"
    assert clipped("x" * 10, 10) == "x" * 10
    assert clipped("x" * 11, 10) == "x" * 9 + "\u2026"


def test_an_s3_error_message_of_any_length_is_kept_to_the_bound() -> None:
    answer = {"Error": {"Code": "SlowDown", "Message": "please reduce your request rate " * 5000}}
    error = str(unreachable("s3://docs (http://127.0.0.1:9000)", ClientError(answer, "GetObject")))
    assert error.startswith("cannot read from the content store s3://docs (http://127.0.0.1:9000): SlowDown: please")
    assert len(error) <= MAX_REASON_CHARS + 100 and error.endswith("\u2026")
