"""Each Lua script run directly against a real Redis, including twice with the same input."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading

import pytest
import redis

from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.documents import AuxWrite, Batch, Delete, Failure, Upsert
from kmrl_sync.engine.keys import ConnectorKeys, doc_key
from kmrl_sync.engine.queues import CeleryMessages, queue_target
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import FAILED_DOCUMENTS_KEPT, FAILURE_REASON_CHARS, ConnectorState, LeaseLost
from tests.support.celery_messages import decode_queue
from tests.support.documents import document
from tests.support.waiting import wait_until


@pytest.fixture
def scripts(redis_client: redis.Redis) -> Scripts:
    return Scripts.register(redis_client)


@pytest.fixture
def state(redis_client: redis.Redis, scripts: Scripts) -> ConnectorState:
    return ConnectorState(redis_client, scripts, "kmrl", "docs")


def _celery(state: ConnectorState, fmt: str = "celery"):
    queue = QueueConfig(format=fmt)
    return queue_target(queue, "normal", state.keys), (CeleryMessages(queue, "normal") if fmt == "celery" else None)


def _up(native: str, version: str, **meta: object) -> Upsert:
    return Upsert(native, version, {"filename": native, **meta}, fingerprint=f"fp-{version}")


def test_commit_batch_twice_pushes_once(redis_client, state):
    target, celery = _celery(state)
    batch = Batch([_up("a.txt", "v1"), _up("b.txt", "v1")], cursor="c1",
                  aux=[AuxWrite("extra", "a.txt", "x")])
    first = state.commit(batch, target=target, celery=celery)
    second = state.commit(batch, target=target, celery=celery)
    assert (first.created, first.updated, first.unchanged) == (2, 0, 0)
    assert (second.created, second.updated, second.unchanged) == (0, 0, 2)
    assert [m.document_id for m in decode_queue(redis_client)] == ["docs:a.txt", "docs:b.txt"]
    assert state.cursor() == "c1"
    assert state.versions(["a.txt", "b.txt", "c.txt"]) == ["v1", "v1", None]
    assert state.aux_get("extra", ["a.txt"]) == ["x"]
    doc = document(redis_client, "docs:a.txt")
    assert doc["status"] == "created" and doc["version"] == "v1" and doc["connector"] == "docs"
    assert doc["document_id"] == "docs:a.txt"
    assert list(state.iter_known()) == [("a.txt", "fp-v1"), ("b.txt", "fp-v1")]


def test_the_script_assembles_each_celery_message_with_its_own_ids(redis_client, state):
    """Messages are filled in from the batch's templates: every one decodes, names its document in
    its body and its argsrepr (as Celery writes it: Python's repr, escaped where needed), and has
    an id and delivery tag of its own, across batches too."""
    target, celery = _celery(state)
    odd = ["it's", 'a"b', "caf\u00e9", "back\\slash", "tab\there"]
    natives = [f"doc {i}" for i in range(600)] + odd
    for start in range(0, len(natives), 400):
        state.commit(Batch([_up(n, "v1") for n in natives[start:start + 400]]), target=target, celery=celery)
    state.commit(Batch([Delete("doc 0"), Delete("it's")]), target=target, celery=celery)
    tasks = decode_queue(redis_client)
    assert [t.document_id for t in tasks] == [f"docs:{n}" for n in natives] + ["docs:doc 0", "docs:it's"]
    assert [t.task for t in tasks[-3:]] == ["process_document", "delete_document", "delete_document"]
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len({t.raw["properties"]["delivery_tag"] for t in tasks}) == len(tasks)
    for t in tasks:
        assert t.raw["headers"]["argsrepr"] == repr([t.document_id])
        assert t.raw["headers"]["root_id"] == t.raw["properties"]["correlation_id"] == t.task_id
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", t.task_id)


def test_new_version_is_an_update_and_stale_fields_go(redis_client, state):
    target, celery = _celery(state)
    state.commit(Batch([_up("a.txt", "v1", old_field="x")]), target=target, celery=celery)
    for _ in range(2):
        result = state.commit(Batch([_up("a.txt", "v2")]), target=target, celery=celery)
    assert result.unchanged == 1
    doc = document(redis_client, "docs:a.txt")
    assert doc["status"] == "updated" and doc["version"] == "v2" and "old_field" not in doc
    assert len(decode_queue(redis_client)) == 2


def test_same_document_twice_in_one_batch_is_queued_once(redis_client, state):
    target, celery = _celery(state)
    result = state.commit(Batch([_up("a.txt", "v1"), _up("a.txt", "v1")]), target=target, celery=celery)
    assert (result.created, result.unchanged) == (1, 1)
    assert len(decode_queue(redis_client)) == 1


def test_delete_twice_pushes_one_delete(redis_client, state):
    target, celery = _celery(state)
    state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=celery)
    for _ in range(2):
        state.commit(Batch([Delete("a.txt")]), target=target, celery=celery)
    messages = decode_queue(redis_client)
    assert [(m.task, m.document_id) for m in messages] == [("process_document", "docs:a.txt"),
                                                           ("delete_document", "docs:a.txt")]
    assert document(redis_client, "docs:a.txt")["status"] == "deleted"
    assert state.versions(["a.txt"]) == [None] and list(state.iter_known()) == []


def test_unchanged_version_refreshes_fingerprint_only(redis_client, state):
    target, celery = _celery(state)
    state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=celery)
    state.commit(Batch([Upsert("a.txt", "v1", {}, fingerprint="touched")]), target=target, celery=celery)
    assert list(state.iter_known()) == [("a.txt", "touched")]
    assert len(decode_queue(redis_client)) == 1


def test_lease_fencing_refuses_a_stale_holder(redis_client, state, scripts):
    target, celery = _celery(state)
    redis_client.hset(state.keys.lease, mapping={"token": "someone-else", "run_id": "r2"})
    with pytest.raises(LeaseLost):
        state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=celery, lease_token="mine")
    assert redis_client.llen("document_processing") == 0
    assert state.versions(["a.txt"]) == [None]


def test_a_celery_queue_without_its_templates_is_refused_before_anything_is_sent(redis_client, state):
    target, _ = _celery(state)
    with pytest.raises(ValueError, match="CeleryMessages"):
        state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=None)
    assert redis_client.llen("document_processing") == 0 and state.versions(["a.txt"]) == [None]


def test_list_and_stream_formats(redis_client, state):
    target, _ = _celery(state, "list")
    for _ in range(2):
        state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=None)
    items = [json.loads(x) for x in redis_client.lrange("document_processing", 0, -1)]
    assert items == [{"document_id": "docs:a.txt", "event": "created", "connector": "docs",
                      "metadata": {"filename": "a.txt"}}]
    target, _ = _celery(state, "stream")
    state.commit(Batch([Delete("a.txt")]), target=target, celery=None)
    state.commit(Batch([Delete("a.txt")]), target=target, celery=None)
    entries = redis_client.xrange("document_processing:{docs}")
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"document_id"] == b"docs:a.txt" and fields[b"event"] == b"deleted"


@pytest.mark.parametrize("metadata", [
    {},  # no pairs: header and tail only
    {"path": "b.txt", "size": 3},  # packed into one argument
    {"path": "b.txt", "note": "NUL\0inside"},  # spread over separate arguments
])
@pytest.mark.parametrize("fmt", ["list", "stream", "celery"])
def test_every_entry_shape_carries_its_tail_in_every_format(redis_client, state, fmt, metadata):
    target, celery = _celery(state, fmt)
    batch = Batch([Upsert("b.txt", "v1", dict(metadata)), _up("c.txt", "v1"), Delete("b.txt", dict(metadata))])
    result = state.commit(batch, target=target, celery=celery)
    assert (result.created, result.deleted, result.unchanged) == (2, 1, 0)
    if fmt == "stream":
        items = [(f[b"document_id"].decode(), f[b"event"].decode(), json.loads(f[b"metadata"]))
                 for _id, f in redis_client.xrange(target.key)]
    elif fmt == "list":
        items = [(i["document_id"], i["event"], i["metadata"])
                 for i in map(json.loads, reversed(redis_client.lrange(target.key, 0, -1)))]
    else:
        items = [(json.loads(base64.b64decode(m["body"]))[0][0], m["headers"]["task"], None)
                 for m in map(json.loads, reversed(redis_client.lrange(target.key, 0, -1)))]
    text = {k: (v if isinstance(v, str) else str(v)) for k, v in metadata.items()}
    if fmt == "celery":
        assert items == [("docs:b.txt", "process_document", None), ("docs:c.txt", "process_document", None),
                         ("docs:b.txt", "delete_document", None)]
    else:
        assert items == [("docs:b.txt", "created", text), ("docs:c.txt", "created", {"filename": "c.txt"}),
                         ("docs:b.txt", "deleted", text)]
    doc = document(redis_client, "docs:b.txt")
    assert doc["status"] == "deleted" and {k: doc[k] for k in text} == text


@pytest.mark.parametrize("fmt", ["celery", "list"])
def test_common_fields_reach_every_upsert_and_win_over_its_own(redis_client, state, fmt):
    target, celery = _celery(state, fmt)
    common = {"department": "ops", "source": "filesystem", "priority": "low"}
    batch = Batch([Upsert("a", "v1", {"department": "mine", "size": 3}), Upsert("b", "v1", {})])
    for _ in range(2):
        state.commit(batch, target=target, celery=celery, common=common)
    for native in ("a", "b"):
        doc = document(redis_client, f"docs:{native}")
        assert {k: doc[k] for k in common} == common
    assert document(redis_client, "docs:a")["size"] == "3"
    if fmt == "list":
        items = [json.loads(x) for x in redis_client.lrange(target.key, 0, -1)]
        assert len(items) == 2 and all(item["metadata"]["department"] == "ops" for item in items)
    state.commit(Batch([Delete("a")]), target=target, celery=celery, common=common)
    assert document(redis_client, "docs:a")["status"] == "deleted"


def test_prepared_commit_survives_a_flushed_script_cache_and_a_dropped_connection(redis_client, state):
    target, celery = _celery(state)
    first = state.prepare(Batch([_up("a.txt", "v1")]), target=target, celery=celery)
    redis_client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
    redis_client.config_resetstat()
    assert state.execute(first).created == 1
    evalsha = redis_client.info("commandstats")["cmdstat_evalsha"]
    # redis-py's Script loads the script after NOSCRIPT and sends the batch once more
    assert (evalsha["calls"], evalsha["failed_calls"]) == (2, 1)
    other = redis.Redis(**{k: v for k, v in redis_client.connection_pool.connection_kwargs.items()
                           if k in ("host", "port", "unix_socket_path")})
    other.client_kill_filter(_type="normal", skipme=True)  # the pooled connection is dead now
    second = state.prepare(Batch([_up("b.txt", "v1"), _up("a.txt", "v1")]), target=target, celery=celery)
    try:
        result = state.execute(second)
    except redis.ConnectionError:  # the caller (runner.retrying) resends it on a new connection
        result = state.execute(second)
    assert (result.created, result.unchanged) == (1, 1)
    assert redis_client.llen("document_processing") == 2


def test_list_known_pages_in_byte_order(redis_client, scripts):
    keys = ConnectorKeys("kmrl", "docs")
    names = ["b", "a/b", "a b", "a.txt", "é", "z", "a\nb"]
    names += ["a\x01", "a", "a\x01b"]  # ids of which another is a prefix, with the smallest byte after it
    redis_client.zadd(keys.known, {f"{n}\0fp{i}": 0 for i, n in enumerate(names)})
    state = ConnectorState(redis_client, scripts, "kmrl", "docs")
    listed = list(state.iter_known(page=2))
    assert [n for n, _ in listed] == sorted(names, key=lambda s: s.encode())
    assert [n for n, _ in listed] == sorted(names)  # code point order == UTF-8 byte order
    assert dict(listed) == {n: f"fp{i}" for i, n in enumerate(names)}
    flat = scripts.list_known(keys=[keys.known], args=["a.txt", 2])
    assert flat == scripts.list_known(keys=[keys.known], args=["a.txt", 2])
    assert flat == [b"a/b", b"fp1", b"b", b"fp0"]
    assert scripts.list_known(keys=[keys.known], args=["a", 2]) == [b"a\x01", b"fp7", b"a\x01b", b"fp9"]


def test_lease_scripts_twice(redis_client, scripts):
    keys = ConnectorKeys("kmrl", "docs")
    args = ["tok", 5000, "", "run_id", "run", "host", "h1", "pid", 1, "pidns", "4026531836"]
    assert scripts.acquire_lease(keys=[keys.lease], args=args) == [1]
    assert scripts.acquire_lease(keys=[keys.lease], args=args) == [1]  # re-entrant for its holder
    other = scripts.acquire_lease(keys=[keys.lease], args=["tok2", 5000, "", "run_id", "r2", "host", "h2"])
    assert other[0] == 0 and 0 < other[1] <= 5000
    assert dict(zip(other[2::2], other[3::2], strict=True)) == {
        b"token": b"tok", b"run_id": b"run", b"host": b"h1", b"pid": b"1", b"pidns": b"4026531836"}
    taken = scripts.acquire_lease(keys=[keys.lease], args=["tok2", 5000, "tok", "run_id", "r2", "host", "h2"])
    assert taken == [1]
    assert redis_client.hgetall(keys.lease) == {b"token": b"tok2", b"run_id": b"r2", b"host": b"h2"}
    assert scripts.renew_lease(keys=[keys.lease], args=["tok", 5000]) == 0
    assert scripts.renew_lease(keys=[keys.lease], args=["tok2", 9000]) == 1
    assert scripts.renew_lease(keys=[keys.lease], args=["tok2", 9000]) == 1
    assert 5000 < redis_client.pttl(keys.lease) <= 9000
    assert scripts.release_lease(keys=[keys.lease], args=["tok"]) == 0
    assert scripts.release_lease(keys=[keys.lease], args=["tok2"]) == 1
    assert scripts.release_lease(keys=[keys.lease], args=["tok2"]) == 0
    assert not redis_client.exists(keys.lease)


def test_reset_twice_and_refuses_while_leased(redis_client, state, scripts):
    target, celery = _celery(state)
    state.commit(Batch([_up("a.txt", "v1")], cursor="c", aux=[AuxWrite("m", "f", "v")]), target=target, celery=celery)
    redis_client.hset(state.keys.lease, mapping={"token": "t", "run_id": "r"})
    with pytest.raises(LeaseLost):
        state.reset()
    assert state.cursor() == "c"
    redis_client.delete(state.keys.lease)
    assert state.reset() == 4  # known, cursor, auxkeys, the aux key
    assert state.reset() == 0
    assert state.cursor() is None and list(state.iter_known()) == [] and state.aux_get("m", ["f"]) == [None]
    assert document(redis_client, "docs:a.txt")  # workers may still look it up
    result = state.commit(Batch([_up("a.txt", "v1")]), target=target, celery=celery)
    assert result.created == 1  # after a reset everything is sent again


def test_keys_share_the_connector_hash_tag(state):
    k = state.keys
    for key in (k.known, k.docdefaults, k.cursor, k.lease, k.stats, k.auxkeys, k.failures, k.aux("x"),
                k.stream("q"), k.doc("docs:a.txt"), *k.legacy_state):
        assert "{docs}" in key


def test_one_id_changing_within_a_batch_ends_in_its_last_state(redis_client, state):
    target, celery = _celery(state)
    batch = Batch([_up("a", "v1"), _up("a", "v2"), Delete("a"), _up("b", "v1"), Delete("b"), _up("b", "v2")])
    first = state.commit(batch, target=target, celery=celery)
    assert (first.created, first.updated, first.deleted) == (3, 1, 2)
    assert state.versions(["a", "b"]) == [None, "v2"]
    assert list(state.iter_known()) == [("b", "fp-v2")]
    # Replaying churn re-emits it (connectors dedupe within a batch, last wins), but the state
    # it leaves is the same.
    state.commit(batch, target=target, celery=celery)
    assert state.versions(["a", "b"]) == [None, "v2"] and list(state.iter_known()) == [("b", "fp-v2")]


def test_a_large_batch_uses_sliced_bulk_commands(redis_client, state):
    target, celery = _celery(state)
    batch = Batch([_up(f"doc{i:05}", "v1") for i in range(3000)])
    assert state.commit(batch, target=target, celery=celery).created == 3000
    assert state.commit(batch, target=target, celery=celery).unchanged == 3000
    assert redis_client.llen("document_processing") == 3000 and state.known_count() == 3000


@pytest.mark.parametrize("metadata", [
    {"filename": "a", "blob": "", "empty_last": ""},  # packed: empty values in the middle and at the end
    {"subject": "NUL\0inside", "body": "x"},  # a NUL forces the pairs to travel separately
    {"size": 12, "tags": ["a", "b"], "skipped": None},  # non-strings become text, None is left out
])
def test_metadata_reaches_the_doc_hash_exactly(redis_client, state, metadata):
    target, celery = _celery(state)
    for _ in range(2):
        state.commit(Batch([Upsert("m", "v1", dict(metadata))]), target=target, celery=celery)
    doc = document(redis_client, "docs:m")
    expected = {k: (v if isinstance(v, str) else json.dumps(v) if isinstance(v, list) else str(v))
                for k, v in metadata.items() if v is not None}
    assert {k: doc[k] for k in expected} == expected
    assert doc["status"] == "created" and doc["version"] == "v1"


def test_known_pages_are_read_ahead_on_a_thread_and_stop_with_the_reader(redis_client, scripts):
    keys = ConnectorKeys("kmrl", "docs")
    names = [f"n{i:03d}" for i in range(25)]
    redis_client.zadd(keys.known, {f"{n}\0": 0 for n in names})
    asked: list[tuple[str, str]] = []

    def list_known(*, keys, args):
        asked.append((args[0], threading.current_thread().name))
        if args[0] == "n019":
            raise redis.ConnectionError("gone")
        return scripts.list_known(keys=keys, args=args)

    state = ConnectorState(redis_client, dataclasses.replace(scripts, list_known=list_known), "kmrl", "docs")
    reader = state.iter_known(page=10)
    assert next(reader)[0] == "n000"
    wait_until(lambda: len(asked) >= 2, 5, "the second page to be asked for", interval=0.01)
    assert asked[0] == ("", "MainThread") and asked[1][0] == "n009"  # page 2 asked while page 1 is read
    assert asked[1][1].startswith("known-pages")
    assert [next(reader)[0] for _ in range(19)] == names[1:20]  # up to the failing page's start
    with pytest.raises(redis.ConnectionError):  # a page that fails fails the reader, in order
        next(reader)
    reader = state.iter_known(page=10)
    next(reader)
    reader.close()  # a reader that stops early leaves no thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("known-pages")]
    assert [n for n, _ in state.iter_known(page=30)] == names  # one page: no thread at all


def _failures(redis_client, state) -> dict[str, dict]:
    return {k.decode(): json.loads(v) for k, v in redis_client.hgetall(state.keys.failures).items()}


def test_failed_documents_are_listed_and_leave_the_list_when_committed(redis_client, state):
    target, celery = _celery(state)
    failing = Batch([_up("ok.txt", "v1")], failures=[
        Failure("bad.txt", "cannot read: Permission denied"), Failure("gone.txt", "cannot stat"),
        Failure("kept.txt", "too big"), Failure(None, "folder x cannot be read"),
        Failure("bad.txt", "reported twice in one batch")])
    state.commit(failing, target=target, celery=celery, now="2026-01-01T00:00:00.000Z")
    state.commit(failing, target=target, celery=celery, now="2026-01-01T00:05:00.000Z")  # twice

    listed = _failures(redis_client, state)
    assert set(listed) == {"bad.txt", "gone.txt", "kept.txt", ""}
    assert listed["bad.txt"] == {"reason": "reported twice in one batch", "since": "2026-01-01T00:00:00.000Z",
                                 "last": "2026-01-01T00:05:00.000Z", "attempts": 2}
    assert len(decode_queue(redis_client)) == 1  # the failures changed nothing else

    # Committed in any way (a new version, the same version again, a delete): off the list, atomically.
    state.commit(Batch([_up("bad.txt", "v1"), _up("ok.txt", "v1"), Delete("gone.txt")]),
                 target=target, celery=celery)
    assert set(_failures(redis_client, state)) == {"kept.txt", ""}


def test_the_failed_documents_list_is_bounded(redis_client, state):
    target, celery = _celery(state)
    for b in range(3):
        state.commit(Batch(failures=[Failure(f"f{b}-{i:02d}", "x" * 5000) for i in range(60)]),
                     target=target, celery=celery, now=f"2026-01-01T00:0{b}:00.000Z")
    listed = _failures(redis_client, state)
    assert len(listed) == FAILED_DOCUMENTS_KEPT
    assert set(listed) == {f"f{b}-{i:02d}" for b in (1, 2) for i in range(60)} - {f"f1-{i:02d}" for i in range(20)}
    assert {len(entry["reason"]) for entry in listed.values()} == {FAILURE_REASON_CHARS}


def test_a_refused_commit_lists_no_failure_and_reset_clears_the_list(redis_client, state, scripts):
    target, celery = _celery(state)
    batch = Batch([_up("a.txt", "v1")], failures=[Failure("b.txt", "broken")])
    redis_client.hset(state.keys.lease, mapping={"token": "someone-else", "run_id": "r2"})
    with pytest.raises(LeaseLost):
        state.commit(batch, target=target, celery=celery, lease_token="mine")
    assert not redis_client.exists(state.keys.failures)
    redis_client.delete(state.keys.lease)
    state.commit(batch, target=target, celery=celery)
    assert set(_failures(redis_client, state)) == {"b.txt"}
    state.reset()
    assert not redis_client.exists(state.keys.failures)


def test_a_bad_aux_op_is_refused_before_anything_is_written(redis_client, state):
    target, celery = _celery(state)
    prepared = state.prepare(Batch([_up("a.txt", "v1")], cursor="c1", aux=[AuxWrite("extra", "a", "x")]),
                             target=target, celery=celery)
    args = [("bogus" if a == "hset" else a) for a in prepared.args]
    with pytest.raises(redis.ResponseError, match="BAD_AUX_OP"):
        state.scripts.commit_batch(keys=prepared.keys, args=args)
    assert redis_client.dbsize() == 0


def test_a_version_equal_to_the_sha256_is_stored_once(redis_client, state):
    target, celery = _celery(state)
    sha = "c0" * 32
    for version in (sha, "v2", sha):
        state.commit(Batch([Upsert("m", version, {"filename": "Report.eml", "sha256": sha, "size": 3})]),
                     target=target, celery=celery)
        doc = document(redis_client, "docs:m")
        assert (doc["filename"], doc["sha256"], doc["version"], doc["size"]) == ("Report.eml", sha, version, "3")
        stored = redis_client.hgetall(doc_key("kmrl", "docs:m"))
        assert (b"version" in stored) == (version != sha)
    assert state.versions(["m"]) == [sha] and len(decode_queue(redis_client)) == 3
