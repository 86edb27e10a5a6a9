"""Glob semantics and queue message shapes, no services."""

from __future__ import annotations

import base64
import json

import pytest

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.config.models import QueueConfig
from kmrl_sync.engine.keys import ConnectorKeys, celery_queue_key
from kmrl_sync.engine.queues import CeleryMessages, celery_tail, placement, queue_target
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


def test_a_celery_template_is_the_message_with_its_four_slots_cut_out():
    """The commit script fills in the slots (tests/integration/test_lua_scripts.py has the messages)."""
    process, delete = CeleryMessages(QueueConfig(), "low").templates
    for template, task in ((process, "process_document"), (delete, "delete_document")):
        pieces = template.split("\0")
        assert pieces[1::2] == ["body", "id", "id", "argsrepr", "id", "tag"]
        filled = "".join(p if i % 2 == 0 else '"x"' for i, p in enumerate(pieces))
        message = json.loads(filled)
        assert message["headers"]["task"] == task and message["properties"]["priority"] == 6


@pytest.mark.parametrize("document_id", ["c:plain/a b.txt", "c:it's", 'c:a"b', "c:caf\u00e9", "c:back\\slash"])
def test_a_celery_tail_carries_the_body_and_an_argsrepr_only_where_one_needs_escaping(document_id):
    body, _, argsrepr = celery_tail(document_id).partition("\0")
    args, kwargs, embed = json.loads(base64.b64decode(body))
    assert args == [document_id] and kwargs == {} and embed["chain"] is None
    plain = document_id == "c:plain/a b.txt"
    assert (argsrepr == "") is plain
    if not plain:
        assert json.loads(argsrepr) == repr([document_id])


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
        for template in CeleryMessages(QueueConfig(), priority).templates:
            assert f'"priority": {place.level}' in template
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
