"""Glob semantics and queue message shapes, no services."""

from __future__ import annotations

import base64
import json

import pytest

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.keys import ConnectorKeys, celery_queue_key
from kmrl_sync.engine.queues import CeleryMessages, placement, queue_target
from kmrl_sync.redaction import mask_url


@pytest.mark.parametrize(("include", "exclude", "path", "wanted"), [
    (["**/*"], [], "top.txt", True),
    (["**/*"], [], "a/b/c.txt", True),
    (["**/*.pdf"], [], "top.pdf", True),  # ** spans zero folders
    (["**/*.pdf"], [], "a/b/x.pdf", True),
    (["*.pdf"], [], "a/b/x.pdf", True),  # no slash: any depth, like .gitignore
    (["docs/*.pdf"], [], "a/docs/x.pdf", False),  # with a slash: anchored
    (["docs/**/*.pdf"], [], "docs/x.pdf", True),
    (["**/*"], ["**/~$*"], "a/~$lock.docx", False),
    (["**/*"], ["tmp/"], "tmp/x", False),
    (["**/*.PDF"], [], "x.pdf", False),  # case-sensitive, as on Linux
    (["**/*", "!*.log"], [], "a.log", False),  # negation falls back to pathspec itself
])
def test_gitignore_style_globs(include, exclude, path, wanted):
    assert PathFilter(include, exclude).wants_file(path) is wanted


def test_excluded_folders_are_pruned():
    f = PathFilter(["**/*"], ["node_modules/", ".git/"])
    assert f.prunes_dir("node_modules") and f.prunes_dir("a/.git") and not f.prunes_dir("src")


def test_celery_message_decodes_and_ids_are_unique():
    render = CeleryMessages(QueueConfig(), "low").batch()
    messages = [json.loads(render(f"c:doc {i}", i % 2 == 0)) for i in range(1000)]
    assert len({m["headers"]["id"] for m in messages}) == 1000
    assert len({m["properties"]["delivery_tag"] for m in messages}) == 1000
    first = messages[1]
    assert first["headers"]["task"] == "delete_document"
    assert first["properties"]["priority"] == 6
    args, kwargs, embed = json.loads(base64.b64decode(first["body"]))
    assert args == ["c:doc 1"] and kwargs == {} and embed["chain"] is None


def test_queue_targets_per_priority_and_format():
    keys = ConnectorKeys("kmrl", "c")
    assert queue_target(QueueConfig(), "normal", keys).key == "document_processing"
    assert queue_target(QueueConfig(), "low", keys).key == "document_processing\x06\x166"
    high = queue_target(QueueConfig(), "high", keys)
    assert high.key == "document_processing" and high.side == "R"
    assert queue_target(QueueConfig(format="stream"), "normal", keys).key == "document_processing:{c}"


@pytest.mark.parametrize("fmt", ["celery", "list"])
@pytest.mark.parametrize("priority", ["low", "normal", "high"])
def test_priority_means_the_same_in_every_place_it_shows(fmt, priority):
    """`placement` is the one reading of `priority`: the queue, the side and the message's own
    priority field all follow it."""
    place = placement(priority)
    target = queue_target(QueueConfig(format=fmt), priority, ConnectorKeys("kmrl", "c"))
    assert target.side == place.side
    if fmt == "celery":
        assert target.key == celery_queue_key("document_processing", place.level)
        message = json.loads(CeleryMessages(QueueConfig(), priority).batch()("c:x", True))
        assert message["properties"]["priority"] == place.level
    else:
        assert target.key == "document_processing"


def test_an_unknown_priority_is_refused_not_guessed():
    with pytest.raises(ValueError, match="unknown priority"):
        placement("urgent")


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:p%40ss@host/1", "rediss://user:***@host/1"),
    ("redis://host:6379", "redis://host:6379"),
])
def test_urls_are_redacted(url, shown):
    assert mask_url(url) == shown
