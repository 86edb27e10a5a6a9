"""SharePoint's reads of its own state wait for the batch in flight exactly when it touches them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kmrl_sync.config.models import QueueConfig
from kmrl_sync.connectors.sharepoint.reads import CommittedReads
from kmrl_sync.engine.documents import AuxWrite, Batch, Delete, Upsert
from kmrl_sync.engine.queues import queue_target
from kmrl_sync.engine.scripts import Scripts
from kmrl_sync.engine.state import ConnectorState


@pytest.fixture
def reads(redis_client):
    """CommittedReads over a real state, with a committer that holds one batch back: it commits
    the batch handed over last only when waited for, as the engine's background commit may."""
    state = ConnectorState(redis_client, Scripts.register(redis_client), "kmrl", "sp")
    target = queue_target(QueueConfig(format="list"), "normal", state.keys)
    held: list[Batch] = []
    waits: list[int] = []

    def wait_committed() -> None:
        waits.append(len(held))
        while held:
            state.commit(held.pop(), target=target, celery=None)

    reads = CommittedReads(SimpleNamespace(state=state, wait_committed=wait_committed))

    def hand_over(batch: Batch) -> None:
        reads.handed_over(batch)
        held.append(batch)

    state.commit(Batch([Upsert("old", "v1", {})], aux=[AuxWrite("items", "old", "committed")]),
                 target=target, celery=None)
    return SimpleNamespace(reads=reads, hand_over=hand_over, waits=waits)


def test_a_read_of_what_the_batch_in_flight_writes_sees_it_committed(reads):
    reads.hand_over(Batch([Upsert("a", "v1", {}), Delete("old")], aux=[AuxWrite("items", "a", "new")]))
    assert reads.reads.aux_get("items", ["a"]) == ["new"]
    assert reads.waits == [1]
    reads.hand_over(Batch([Upsert("b", "v2", {})]))
    assert reads.reads.versions(["b", "x"]) == ["v2", None]
    reads.hand_over(Batch(aux=[AuxWrite("items", None)]))
    assert reads.reads.aux_get("items", ["zzz"]) == [None]  # a key deleted whole: any field
    assert reads.waits == [1, 1, 1]


def test_a_read_of_what_the_batch_in_flight_does_not_touch_does_not_wait(reads):
    reads.hand_over(Batch([Upsert("a", "v1", {})], aux=[AuxWrite("items", "a", "new")]))
    assert reads.reads.aux_get("items", ["old", "b"]) == ["committed", None]
    assert reads.reads.aux_get("orphans", ["a"]) == [None]
    assert reads.reads.versions(["old"]) == ["v1"]
    assert reads.waits == []


def test_a_scan_waits_before_every_page(reads):
    reads.hand_over(Batch([Upsert("a", "v1", {})], aux=[AuxWrite("items", "a", "new")]))
    assert dict(reads.reads.aux_scan("items")) == {"old": "committed", "a": "new"}
    assert reads.waits[0] == 1
    reads.hand_over(Batch([Upsert("c", "v1", {})]))
    assert [native for native, _ in reads.reads.iter_known()] == ["a", "c", "old"]
