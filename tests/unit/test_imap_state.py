"""Folder state serialisation, the aux overlay, and the fetch-ahead thread."""

from __future__ import annotations

import threading

import pytest

from kmrl_sync.connectors.imap.folders import (
    AuxView,
    FolderState,
    WrittenFields,
    folder_id,
    location,
    uid_map,
)
from kmrl_sync.connectors.imap.pipeline import Prefetcher
from kmrl_sync.engine.documents import AuxWrite


class _Redis:
    """What AuxView reads: committed aux hashes (a dict), counting round trips."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, str]] = {}
        self.reads = 0
        self.probes = 0
        self.asked: list[str] = []  # every field read back, in order

    def aux_exists(self, name: str) -> bool:
        self.probes += 1
        return bool(self.data.get(name))

    def aux_get(self, name: str, fields: list[str]) -> list[str | None]:
        self.reads += 1
        self.asked += fields
        return [self.data.get(name, {}).get(f) for f in fields]

    def aux_scan(self, name: str):
        self.reads += 1
        return iter(sorted(self.data.get(name, {}).items()))

    def apply(self, writes: list[AuxWrite]) -> None:
        for w in writes:
            if w.field is None:
                self.data.pop(w.key, None)
            elif w.value is None:
                self.data.get(w.key, {}).pop(w.field, None)
            else:
                self.data.setdefault(w.key, {})[w.field] = w.value


def test_folder_state_round_trip_and_garbage() -> None:
    st = FolderState(fid=folder_id("INBOX"), uidvalidity=7, last_uid=42, uidnext=43, count=40, old=[3])
    assert FolderState.loads(st.dumps()) == st
    assert FolderState.loads("not json") is None
    assert folder_id("INBOX") != folder_id("inbox") and len(folder_id("Ä/ß")) == 12
    assert uid_map("f", 7) == "u:f:7" and location("f", 7, 9) == "f:7:9"


def test_aux_view_sees_its_own_writes_and_commits_them() -> None:
    redis = _Redis()
    redis.data["locs"] = {"a": "x:1:1"}
    view = AuxView(redis)
    view.prefetch("locs", ["a", "b", "a"])
    assert redis.reads == 1
    assert view.get("locs", "a") == "x:1:1" and view.get("locs", "b") is None and redis.reads == 1
    view.set("locs", "b", "x:1:2")
    view.delete("locs", "a")
    assert view.get("locs", "b") == "x:1:2" and view.get("locs", "a") is None
    writes = view.writes()
    assert writes == [AuxWrite("locs", "b", "x:1:2"), AuxWrite("locs", "a", None)]
    redis.apply(writes)
    view.handed_over()
    assert view.writes() == [] and view.get("locs", "b") == "x:1:2" and redis.reads == 1


def test_aux_view_drop_then_rewrite() -> None:
    redis = _Redis()
    redis.data["u:f:1"] = {"1": "a", "2": "b"}
    view = AuxView(redis)
    view.set("u:f:1", "3", "c")
    view.drop("u:f:1")
    view.set("u:f:1", "4", "d")
    assert view.get("u:f:1", "1") is None and view.get("u:f:1", "4") == "d"
    redis.apply(view.writes())
    view.handed_over()
    assert redis.data["u:f:1"] == {"4": "d"}


class _InFlight:
    """A batch handed over but not yet in Redis: `wait_committed` applies it, as the engine's would."""

    def __init__(self, redis: _Redis, view: AuxView) -> None:
        self.redis, self.view, self.writes, self.waits = redis, view, [], 0
        view.wait_committed = self.wait

    def hand_over(self) -> None:
        self.redis.apply(self.writes)  # as the engine's: the batch before lands before this one goes out
        self.writes = self.view.writes()
        self.view.handed_over()

    def wait(self) -> None:
        self.waits += 1
        self.redis.apply(self.writes)
        self.writes = []


def test_aux_view_reads_what_the_batch_in_flight_wrote_without_waiting() -> None:
    redis = _Redis()
    redis.data["locs"] = {"a": "x:1:1"}
    view = AuxView(redis)
    flight = _InFlight(redis, view)
    view.set("locs", "a", "x:1:1 y:1:1")
    view.delete("locs", "b")
    flight.hand_over()
    assert view.get("locs", "a") == "x:1:1 y:1:1" and view.get("locs", "b") is None
    view.prefetch("locs", ["a", "c"])  # "c" was not written: Redis answers it, no waiting
    assert flight.waits == 0 and redis.reads == 1


def test_aux_view_waits_for_the_batch_in_flight_where_redis_would_answer_wrongly() -> None:
    redis = _Redis()
    redis.data["u:f:1"] = {"1": "a"}
    redis.data["orphans"] = {}
    view = AuxView(redis)
    flight = _InFlight(redis, view)
    view.drop("u:f:1")  # dropped: until that lands, Redis still has the old fields
    flight.hand_over()
    assert view.get("u:f:1", "2") is None and flight.waits == 1 and "u:f:1" not in redis.data

    view.set("orphans", "doc", "1")
    flight.hand_over()
    assert list(view.scan("orphans")) == [("doc", "1")] and flight.waits == 2  # a scan always waits

    view.CACHE_LIMIT = 0  # a cache reset forgets what the batch in flight wrote
    view.set("locs", "d", "x:1:2")
    flight.hand_over()
    assert view.get("locs", "d") == "x:1:2" and flight.waits == 3


def test_a_hash_redis_does_not_hold_is_read_from_the_cache_alone() -> None:
    redis = _Redis()
    view = AuxView(redis)
    flight = _InFlight(redis, view)
    view.prefetch("locs", ["a", "b"])  # a first sync: Redis has no such hash
    assert redis.probes == 1 and redis.reads == 0
    assert view.get("locs", "a") is None
    view.set("locs", "a", "x:1:1")
    flight.hand_over()  # in flight, not in Redis yet
    view.prefetch("locs", ["a", "c"])
    assert view.get("locs", "a") == "x:1:1" and view.get("locs", "c") is None
    assert redis.probes == 1 and redis.reads == 0 and flight.waits == 0
    assert len(view._cache) == 1  # absent fields are not cached one by one

    view.CACHE_LIMIT = 0  # everything leaves the cache: what was written is asked of Redis (after the commit),
    view.set("locs", "d", "x:1:2")  # what was never written still is not
    flight.hand_over()
    view.prefetch("locs", ["a", "d", "e"])
    assert flight.waits == 1 and redis.probes == 1 and redis.reads == 1
    assert (view.get("locs", "a"), view.get("locs", "d"), view.get("locs", "e")) == ("x:1:1", "x:1:2", None)
    assert redis.reads == 1


def test_the_cache_is_a_window_whatever_the_run_writes() -> None:
    """Issue 19: a first sync of 30,000 mails held 50,000 cached fields; now at most CACHE_LIMIT,
    and every field reads back what was written, from the cache or from Redis."""
    redis = _Redis()
    view = AuxView(redis)
    flight = _InFlight(redis, view)
    view.prefetch("locs", ["m0"])  # a first sync
    for i in range(5 * view.CACHE_LIMIT):
        view.set("locs", f"m{i}", f"f:1:{i}")
        view.set("atts", f"m{i}", "[]")
        if i % 100 == 99:
            flight.hand_over()
            assert len(view._cache) <= view.CACHE_LIMIT
    flight.hand_over()
    reads, asked = redis.reads, len(redis.asked)
    view.prefetch("locs", [f"new{i}" for i in range(1000)])  # never written: the filter answers
    # ... all but its rare false positives (str hashes are keyed per process, so which ones varies)
    assert redis.reads - reads <= 1 and len(redis.asked) - asked <= 10
    reads = redis.reads
    fields = [f"m{i}" for i in range(0, 5 * view.CACHE_LIMIT, 7)]
    view.prefetch("locs", fields)
    assert [view.get("locs", f) for f in fields] == [f"f:1:{i}" for i in range(0, 5 * view.CACHE_LIMIT, 7)]
    assert redis.reads == reads + 1 and redis.probes == 1


def test_written_fields_never_forget_and_rarely_invent() -> None:
    written = WrittenFields()
    for i in range(100_000):
        written.add("locs", f"<{i}@example.com>")
    assert all(("locs", f"<{i}@example.com>") in written for i in range(100_000))
    invented = sum(("locs", f"<{i}@example.org>") in written for i in range(100_000))
    assert invented <= 50  # about 14 expected at this load
    assert sum(("atts", f"<{i}@example.com>") in written for i in range(1000)) <= 10  # another hash, same fields


def test_a_dropped_hash_is_asked_again() -> None:
    redis = _Redis()
    view = AuxView(redis)
    flight = _InFlight(redis, view)
    view.prefetch("u:f:1", ["1"])
    view.set("u:f:1", "1", "a")
    view.drop("u:f:1")
    view.set("u:f:1", "2", "b")
    flight.hand_over()
    view.prefetch("u:f:1", ["1", "2"])
    assert redis.probes == 2 and flight.waits == 1
    assert view.get("u:f:1", "1") is None and view.get("u:f:1", "2") == "b"


def test_prefetcher_keeps_order_and_reraises() -> None:
    assert list(Prefetcher(lambda: iter(range(10)))) == list(range(10))

    def failing():
        yield 1
        raise ConnectionResetError("gone")

    got = []
    with pytest.raises(ConnectionResetError):
        for item in Prefetcher(failing):
            got.append(item)
    assert got == [1]


def test_prefetcher_stops_its_thread_when_closed_early() -> None:
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = iter(Prefetcher(endless, depth=2))
    assert next(it) == 0
    it.close()
    assert not any(t.name == "imap-fetch" for t in threading.enumerate())
    assert len(produced) < 10
