"""The commit's guards for a replicated Redis, on one real Redis: a replayed commit is harmless, a
commit Redis lost is noticed (COMMITS_LOST), and with replicas_to_ack a commit WAIT cannot confirm
is not reported done."""

from __future__ import annotations

import pytest
import redis

from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.connection import NotReplicated
from kmrl_sync.engine.documents import Batch, Upsert
from kmrl_sync.engine.lease import Lease
from kmrl_sync.engine.queues import CeleryMessages, queue_target
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import CommitsLost, ConnectorState, LeaseLost

TOKEN = "the-run-token"


def _state(client: redis.Redis, replicas: int = 0) -> ConnectorState:
    state = ConnectorState(client, Scripts.register(client), "kmrl", "docs", replicas_to_ack=replicas)
    client.hset(state.keys.lease, mapping={"token": TOKEN, "run_id": "r1"})
    return state


def _prepare(state: ConnectorState, name: str, commits_before: int, cursor: str):
    queue = QueueConfig(format="celery")
    return state.prepare(Batch([Upsert(name, "v1", {"filename": name})], cursor=cursor),
                         target=queue_target(queue, "normal", state.keys), celery=CeleryMessages(queue, "normal"),
                         lease_token=TOKEN, commits_before=commits_before)


def test_a_replayed_commit_is_harmless_and_lost_commits_stop_the_run(redis_client):
    state = _state(redis_client)
    first = _prepare(state, "a.txt", 0, "c1")
    assert state.execute(first).created == 1
    replay = state.execute(first)  # its reply was lost: sent again, e.g. to the promoted replica
    assert (replay.created, replay.unchanged) == (0, 1)
    assert state.execute(_prepare(state, "b.txt", 1, "c2")).created == 1
    assert redis_client.hget(state.keys.lease, "commits") == b"2"
    assert redis_client.llen("document_processing") == 2

    # A failover to a replica that had only the first commit: the second one is gone.
    redis_client.hset(state.keys.lease, "commits", 1)
    redis_client.set(state.keys.cursor, "c1")
    with pytest.raises(CommitsLost, match=r"no longer holds 1 commit\(s\) of this run of docs"):
        state.execute(_prepare(state, "c.txt", 2, "c3"))
    assert redis_client.get(state.keys.cursor) == b"c1"  # not moved past the lost batch
    assert redis_client.llen("document_processing") == 2


def test_without_a_lease_token_nothing_is_counted(redis_client):
    state = _state(redis_client)
    queue = QueueConfig(format="celery")
    prepared = state.prepare(Batch([Upsert("a.txt", "v1", {})]), target=queue_target(queue, "normal", state.keys),
                             celery=CeleryMessages(queue, "normal"), commits_before=7)
    assert state.execute(prepared).created == 1
    assert redis_client.hget(state.keys.lease, "commits") is None


def test_a_commit_no_replica_confirms_is_not_reported_done(redis_client):
    state = _state(redis_client, replicas=1)  # the test Redis has no replica
    with pytest.raises(NotReplicated, match=r"reached 0 of the 1 replica\(s\) redis.replicas_to_ack asks for"):
        state.execute(_prepare(state, "a.txt", 0, "c1"))
    # It is on the master (a retry would find it there and push nothing twice), only not confirmed.
    assert redis_client.llen("document_processing") == 1


def test_a_lease_lost_in_a_failover_never_gives_two_holders(redis_client):
    """The promoted replica never received run A's lease: run B takes it there; A can neither renew
    it (it is not recreated) nor commit (the token is checked), and B's commits count from zero."""
    scripts = Scripts.register(redis_client)
    state = ConnectorState(redis_client, scripts, "kmrl", "docs")
    a = Lease(redis_client, scripts, state.keys, ttl=60, run_id="run-a")
    a.acquire()
    try:
        queue = QueueConfig(format="celery")
        target, celery = queue_target(queue, "normal", state.keys), CeleryMessages(queue, "normal")

        def commit(lease: Lease, name: str, before: int):
            return state.execute(state.prepare(Batch([Upsert(name, "v1", {})]), target=target, celery=celery,
                                               lease_token=lease.token, commits_before=before))

        assert commit(a, "a1.txt", 0).created == 1
        redis_client.delete(state.keys.lease)  # what the promoted replica holds: no lease at all
        assert a.renew() is False and not redis_client.exists(state.keys.lease)  # not recreated by A
        b = Lease(redis_client, scripts, state.keys, ttl=60, run_id="run-b")
        assert b.try_acquire() is None  # B takes it
        with pytest.raises(LeaseLost, match="run-b"):
            commit(a, "a2.txt", 1)
        assert commit(b, "b1.txt", 0).created == 1
        assert a.renew() is False and b.renew() is True
        assert redis_client.llen("document_processing") == 2  # a1 and b1; nothing of A after the loss
        b.release()
    finally:
        a.release()
