"""The engine end to end with a scripted connector: fast checks of batching and failure handling.

On the session's real redis-server (tests/conftest.py), not an emulation: the commit scripts are
the product, and an emulator's Lua is another implementation of them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from kmrl_sync.config.models import Strict
from kmrl_sync.engine.connector import Connector
from kmrl_sync.engine.documents import Batch, Delete, Failure, Upsert
from kmrl_sync.engine.runner import Engine
from kmrl_sync.loading.loader import load_config
from tests.support.documents import document


class ScriptedOptions(Strict):
    pass


class Scripted(Connector):
    """Yields whatever the test scripted, checking the engine committed each batch first."""

    Options = ScriptedOptions
    plan: list[Batch] = []
    seen_cursors: list[str | None] = []

    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        Scripted.seen_cursors.append(cursor)
        for batch in Scripted.plan:
            yield batch
            assert self.context.state.cursor() == (batch.cursor or self.context.state.cursor())


@pytest.fixture
def engine(tmp_path, monkeypatch, redis_server, redis_client):
    (tmp_path / "connectors").mkdir()
    (tmp_path / "sync.yaml").write_text(f"redis: {{url: '{redis_server.url}'}}\n")
    (tmp_path / "connectors" / "s.yaml").write_text("type: scripted\ndepartment: ops\n")
    monkeypatch.setattr("kmrl_sync.engine.registry.load_connector_type", lambda name: Scripted)
    monkeypatch.setattr("kmrl_sync.engine.runner.load_connector_type", lambda name: Scripted)
    config = load_config(tmp_path / "sync.yaml", load_types=False)
    Scripted.seen_cursors = []
    return Engine(config)


def test_batches_commit_in_order_with_cursor_and_failures(engine):
    Scripted.plan = [
        Batch([Upsert("a", "1", {"filename": "a"}), Upsert("a", "1", {"filename": "a"})], cursor="c1"),
        Batch([Upsert("b", "1", {"filename": "b"})], cursor="c2", failures=[Failure("bad", "unreadable")]),
        Batch([Delete("a")], cursor="c3"),
    ]
    summary = engine.run("s", wait=0)
    assert (summary.created, summary.deleted, summary.unchanged, summary.failed) == (2, 1, 1, 1)
    assert summary.result == "partial" and "s:bad: unreadable" in summary.failures[0]
    assert engine.state("s").cursor() == "c3"
    assert document(engine.client, "s:b")["department"] == "ops"
    engine.run("s", wait=0)
    assert Scripted.seen_cursors == [None, "c3"]


def test_a_crashing_connector_fails_the_run_but_keeps_committed_work(engine):
    def explode():
        yield Batch([Upsert("a", "1", {})], cursor="c1")
        raise RuntimeError("boom")

    Scripted.plan = []
    original = Scripted.sync
    Scripted.sync = lambda self, cursor, full=False: explode()  # type: ignore[method-assign]
    try:
        summary = engine.run("s", wait=0)
    finally:
        Scripted.sync = original  # type: ignore[method-assign]
    assert summary.result == "failed" and "boom" in summary.error
    assert engine.state("s").cursor() == "c1"
    stats = engine.state("s").stats()
    assert stats["last_run_result"] == "failed" and stats["failing_since"]
    assert not engine.client.exists("kmrl:{s}:lease")


def test_options_model_is_a_pydantic_model():
    assert issubclass(Scripted.Options, BaseModel)
