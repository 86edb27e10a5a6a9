"""The connector contract, run against every built-in connector type and its real source.

Each type gets a driver that adds, changes and removes documents in a real source (a folder, the
test Dovecot, the local Graph server). The tests then hold every type to the same promises: it is
an installed `Connector` with a strict options model; each document reaches the queue once; a run
with nothing new queues nothing; an addition, a change and a removal queue exactly that; the
optional hooks (`check_connection`, `close`) behave; and commits overlap the next batch exactly as
the type declares (`pipelined_commits`), with the same outcome however late the commits are.
"""

from __future__ import annotations

import email.utils
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmrl_sync.engine.connector import Connector, ConnectorError
from kmrl_sync.engine.registry import available_types, load_connector_type
from tests.support.celery_messages import decode_queue

NAME = "contract"
BUILT_IN = ("filesystem", "imap", "sharepoint")


class FilesystemSource:
    type_name = "filesystem"
    can_change = True
    several_batches = 1_100  # documents that make a run of more than one batch (BATCH_LIMIT is 500)

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()

    def configure(self, project, *, reachable: bool = True) -> None:
        project.filesystem(NAME, self.root if reachable else self.root / "missing")

    def add(self, key: str, content: bytes) -> str:
        (self.root / f"{key}.txt").write_bytes(content)
        return f"{NAME}:{key}.txt"

    def change(self, key: str, content: bytes) -> str:
        return self.add(key, content)

    def remove(self, key: str) -> None:
        (self.root / f"{key}.txt").unlink()


class ImapSource:
    type_name = "imap"
    can_change = False  # a mail's content never changes in IMAP
    several_batches = 250  # a batch per fetched chunk of 200 mails, then the rest

    def __init__(self, box):
        self.box = box
        self.uids: dict[str, int] = {}

    def configure(self, project, *, reachable: bool = True) -> None:
        from tests.integration.imap_helpers import write_connector
        from tests.support.dovecot import free_port

        path = write_connector(project, NAME, self.box, folders="[INBOX]")
        if not reachable:
            path.write_text(path.read_text().replace(f"port: {self.box.port}", f"port: {free_port()}")
                            + "  timeout: 2s\n")

    def add(self, key: str, content: bytes) -> str:
        raw = (f"From: Contract <contract@example.org>\r\nTo: hub@example.org\r\nSubject: {key}\r\n"
               f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n"
               f"Message-ID: <{key}@Contract.Test>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\n\r\n").encode() + content + b"\r\n"
        self.uids[key] = self.box.append("INBOX", raw)
        return f"{NAME}:{key}@contract.test"

    def change(self, key: str, content: bytes) -> str:
        raise AssertionError("not for IMAP")

    def remove(self, key: str) -> None:
        self.box.expunge("INBOX", self.uids.pop(key))


class SharePointSource:
    type_name = "sharepoint"
    can_change = True
    several_batches = 10  # pages of 3 items

    def __init__(self, graph):
        self.graph = graph
        site = graph.add_site(hostname="kmrl.sharepoint.com", path="/sites/Engineering")
        self.drive = site.add_drive(name="Documents", web_url_name="Shared Documents")

    def configure(self, project, *, reachable: bool = True) -> None:
        from tests.support.dovecot import free_port

        graph_url = self.graph.graph_url if reachable else f"http://127.0.0.1:{free_port()}/v1.0"
        project.connector(NAME, (
            "type: sharepoint\nschedule: {every: 10m}\ndepartment: engineering\noptions:\n"
            f"  tenant_id: {self.graph.tenant_id}\n  client_id: {self.graph.client_id}\n"
            f"  client_secret: \"{self.graph.client_secret}\"\n"
            "  site_url: https://kmrl.sharepoint.com/sites/Engineering\n  library: Shared Documents\n"
            f"  graph_url: {graph_url}\n  authority_url: {self.graph.authority_url}\n  page_size: 3\n"
            "  timeout: 2\n"))

    def add(self, key: str, content: bytes) -> str:
        return f"{NAME}:{self.drive.put_file(f'/{key}.txt', content).id}"

    def change(self, key: str, content: bytes) -> str:
        return self.add(key, content)

    def remove(self, key: str) -> None:
        self.drive.delete(f"/{key}.txt")


@pytest.fixture(params=BUILT_IN)
def source(request, tmp_path: Path) -> Iterator[Any]:
    if request.param == "filesystem":
        yield FilesystemSource(tmp_path / "source")
    elif request.param == "imap":
        yield ImapSource(request.getfixturevalue("dovecot_mailbox"))
    else:
        from tests.support.graph_server import FakeGraph

        with FakeGraph(tenant_id="tenant-kmrl", client_id="client-kmrl", client_secret="s3cret-42") as graph:
            yield SharePointSource(graph)


def _queued(redis_client) -> Counter[tuple[str, str]]:
    return Counter((t.task, t.document_id) for t in decode_queue(redis_client))


def _run(project) -> Any:
    summary = project.engine().run(NAME)
    assert summary.result == "ok", summary.error
    return summary


def test_the_type_is_an_installed_connector_with_a_strict_options_model(source) -> None:
    from pydantic import ValidationError

    assert source.type_name in available_types()
    connector_type = load_connector_type(source.type_name)
    assert issubclass(connector_type, Connector) and connector_type.description
    with pytest.raises(ValidationError, match="no_such_option"):
        connector_type.Options.model_validate({"no_such_option": 1})


def test_each_document_once_then_a_quiet_run_queues_nothing(project, source, redis_client) -> None:
    ids = [source.add(f"doc-{i}", f"content {i}".encode()) for i in range(3)]
    source.configure(project)
    first = _run(project)
    assert _queued(redis_client) == Counter({("process_document", d): 1 for d in ids})
    assert first.created == 3 and first.failed == 0
    again = _run(project)
    assert again.created == again.updated == again.deleted == 0
    assert sum(_queued(redis_client).values()) == 3


def test_an_addition_a_change_and_a_removal_queue_exactly_that(project, source, redis_client) -> None:
    kept = source.add("kept", b"kept")
    changed = source.add("changed", b"first version")
    removed = source.add("removed", b"short-lived")
    source.configure(project)
    _run(project)
    redis_client.delete("document_processing")

    added = source.add("added", b"new document")
    expected = Counter({("process_document", added): 1, ("delete_document", removed): 1})
    if source.can_change:
        assert source.change("changed", b"second version, longer") == changed
        expected[("process_document", changed)] = 1
    source.remove("removed")
    summary = _run(project)
    assert _queued(redis_client) == expected
    assert (summary.created, summary.deleted, summary.updated) == (1, 1, 1 if source.can_change else 0)
    assert ("process_document", kept) not in _queued(redis_client)


def test_optional_hooks_behave(project, source, redis_client, monkeypatch) -> None:
    from types import SimpleNamespace

    from kmrl_sync.loading.loader import load_config

    source.add("doc", b"content")
    source.configure(project)
    engine = project.engine()
    cfg = load_config(project.config).connectors[NAME]
    connector = engine.make_connector(cfg, engine.state(NAME), lambda: False)
    connector.check_connection()
    connector.close()
    connector.close()  # closing twice is harmless

    source.configure(project, reachable=False)
    monkeypatch.setattr("tenacity.nap.time", SimpleNamespace(sleep=lambda _seconds: None))  # retry at once
    cfg = load_config(project.config).connectors[NAME]
    connector = engine.make_connector(cfg, engine.state(NAME), lambda: False)
    with pytest.raises(ConnectorError) as failure:
        connector.check_connection()
    assert str(failure.value) and "s3cret" not in str(failure.value)
    connector.close()


def test_commits_overlap_the_next_batch_only_as_the_type_declares(project, source, redis_client,
                                                                   monkeypatch) -> None:
    """The engine's pipelined commits, per type. Without `pipelined_commits` a batch is committed
    before the generator is resumed. With it, the batch yielded last is still committing while the
    type produces the next one: here each background commit is held until the type has yielded its
    next batch, ended, or called `context.wait_committed()`, so a type that read Redis behind a
    pending commit without that call would read stale state. `wait_committed()` leaves nothing in
    flight, and the run's outcome is the one every other test expects."""
    import threading

    from kmrl_sync.engine.state import ConnectorState

    counts = {"prepared": 0, "committed": 0, "allowed": 0}
    may_commit = threading.Semaphore(0)
    prepare, execute = ConnectorState.prepare, ConnectorState.execute

    def counted_prepare(self, *args, **kwargs):
        counts["prepared"] += 1
        return prepare(self, *args, **kwargs)

    def held_execute(self, prepared):
        if threading.current_thread() is not threading.main_thread():  # a background commit
            assert may_commit.acquire(timeout=60), "a background commit was never let through"
        result = execute(self, prepared)
        counts["committed"] += 1
        return result

    def let_submitted_commit() -> None:
        while counts["allowed"] < counts["prepared"]:
            counts["allowed"] += 1
            may_commit.release()

    monkeypatch.setattr(ConnectorState, "prepare", counted_prepare)
    monkeypatch.setattr(ConnectorState, "execute", held_execute)
    ids = [source.add(f"doc-{i}", f"content {i}".encode()) for i in range(source.several_batches)]
    source.configure(project)
    engine = project.engine()
    in_flight: list[int] = []  # batches prepared but not committed, each time the engine resumes the type
    after_wait: list[int] = []
    make = engine.make_connector

    def watched(*args, **kwargs):
        connector = make(*args, **kwargs)
        sync = connector.sync

        def observed(cursor, *, full=False):
            drain = connector.context.wait_committed  # the engine's, set before the first batch is asked for

            def wait_committed() -> None:
                let_submitted_commit()
                drain()
                after_wait.append(counts["prepared"] - counts["committed"])

            connector.context.wait_committed = wait_committed
            for batch in sync(cursor, full=full):
                let_submitted_commit()  # the type has produced its next batch
                yield batch
                in_flight.append(counts["prepared"] - counts["committed"])
            let_submitted_commit()

        connector.sync = observed
        return connector

    monkeypatch.setattr(engine, "make_connector", watched)
    summary = engine.run(NAME)
    assert summary.result == "ok", summary.error
    assert counts["committed"] >= 2, "the run must commit several batches for an overlap to be possible"
    pipelined = load_connector_type(source.type_name).pipelined_commits
    assert max(in_flight) == (1 if pipelined else 0), in_flight
    assert set(after_wait) <= {0}, after_wait
    assert summary.created == len(ids)
    assert _queued(redis_client) == Counter({("process_document", d): 1 for d in ids})
    monkeypatch.undo()  # commits as usual again
    again = _run(project)
    assert again.created == again.updated == again.deleted == 0
