"""A Graph server whose items are malformed: each bad entry is one failure, the run goes on.

An item's id becomes part of Redis keys and of the commit script's arguments. Before, one delta
entry whose id held a NUL (or was a number, an object, 100,000 characters) or whose `size` was not a
number failed every run of the connector: the page was never committed, so its cursor never moved
past the entry, and the good documents after it were never synced. Now such an entry is reported
(`failed 1`, with the id and name it came with, escaped) and skipped; a size that is not a count is
unknown, and the download's own size cap holds.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.test_sharepoint_sync import configure, doc, tasks

UNUSABLE_IDS = ["bad\x00id", "two words", "x" * 100_000, "\x1b[31mred", "", 12345, {"x": 1}, ["a"], None, True]


def _status(project) -> dict:
    return json.loads(project.cli("status", "sp", "--json", check=True).stdout)["connectors"][0]


@pytest.mark.parametrize("bad_id", UNUSABLE_IDS, ids=lambda v: repr(v)[:20])
def test_an_item_with_an_unusable_id_is_one_failure_and_the_rest_is_synced(project, graph, drive, redis_client,
                                                                           bad_id) -> None:
    good = [drive.put_file(f"/good{i}.txt", b"good %d" % i) for i in range(5)]
    drive.put_file("/bad.txt", b"bad")
    graph.tamper("bad.txt", id=bad_id)
    configure(project, graph)
    first = project.cli("sync", "sp")
    assert first.returncode == 1 and "created 5" in first.stdout and "failed 1" in first.stdout, first.stdout
    assert "Graph sent an item whose id is unusable" in first.stdout and "'bad.txt'" in first.stdout
    assert "\x00" not in first.stdout + first.stderr and "\x1b" not in first.stdout + first.stderr
    assert len(first.stdout) < 5000
    assert sorted(t for _task, t in tasks(redis_client)) == sorted(f"sp:{item.id}" for item in good)
    assert _status(project)["last_run"]["result"] == "partial"
    # the cursor moved on: the next run is incremental, and a new file arrives
    added = drive.put_file("/later.txt", b"later")
    second = project.cli("sync", "sp", check=True)
    assert "created 1" in second.stdout and "failed 0" in second.stdout, second.stdout
    assert doc(redis_client, added.id)["filename"] == "later.txt"


def test_an_unusable_item_in_an_incremental_round_is_reported_and_passed(project, graph, drive,
                                                                         redis_client) -> None:
    drive.put_file("/first.txt", b"first")
    configure(project, graph)
    project.cli("sync", "sp", check=True)
    drive.put_file("/bad.txt", b"bad")
    fine = drive.put_file("/fine.txt", b"fine")
    graph.tamper("bad.txt", id="bad\x00id")
    second = project.cli("sync", "sp")
    assert second.returncode == 1 and "created 1" in second.stdout and "failed 1" in second.stdout, second.stdout
    assert doc(redis_client, fine.id)["filename"] == "fine.txt"
    assert "failed 0" in project.cli("sync", "sp", check=True).stdout


@pytest.mark.parametrize("fields", [{"size": "lots"}, {"size": [1]}, {"size": -5}, {"size": True},
                                    {"parentReference": {"id": {"nested": 1}}}, {"name": {"n": 1}}],
                         ids=lambda f: repr(f)[:30])
def test_malformed_fields_of_an_item_do_not_stop_the_run(project, graph, drive, redis_client, fields) -> None:
    drive.put_file("/good.txt", b"good")
    odd = drive.put_file("/odd.txt", b"odd bytes")
    graph.tamper("odd.txt", **fields)
    configure(project, graph)
    result = project.cli("sync", "sp")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "created" in result.stdout
    if "parentReference" in fields:  # no usable parent: the existing "parent unknown" failure, retried
        assert "failed 1" in result.stdout and "parent folder" in result.stdout
    else:  # the size is unknown (the content's own size is recorded)
        assert result.returncode == 0 and "created 2" in result.stdout, result.stdout
        assert doc(redis_client, odd.id)["size"] == str(len(b"odd bytes"))


def test_a_look_up_answered_with_another_item_is_a_failure_of_the_item_looked_up(project, graph, drive,
                                                                                 redis_client) -> None:
    drive.put_file("/good.txt", b"good")
    denied = drive.put_file("/denied.txt", b"secret plans")
    graph.denied_downloads.add(denied.id)
    configure(project, graph)
    first = project.cli("sync", "sp")
    assert "failed 1" in first.stdout and denied.id in first.stdout, first.stdout
    # the next run looks the failed item up again; the server answers with some other id
    graph.denied_downloads.clear()
    graph.tamper("denied.txt", id="someone-else")
    second = project.cli("sync", "sp")
    assert "failed 1" in second.stdout and "answered the look-up" in second.stdout, second.stdout
    assert "Traceback" not in second.stderr
    # and once it answers properly, the content is fetched
    graph.tamper("denied.txt")
    third = project.cli("sync", "sp", check=True)
    assert "created 1" in third.stdout, third.stdout
    assert doc(redis_client, denied.id)["filename"] == "denied.txt"


def test_overlong_texts_of_an_item_are_bounded_and_long_tags_still_tell_versions_apart(project, graph, drive,
                                                                                    redis_client) -> None:
    item = drive.put_file("/long.txt", b"v1")
    graph.tamper("long.txt", name="n" * 100_000, cTag="c" * 100_000 + "1", webUrl="u" * 100_000)
    configure(project, graph)
    first = project.cli("sync", "sp", check=True)
    assert "created 1" in first.stdout and len(first.stdout) < 5000, first.stdout[:2000]
    meta = doc(redis_client, item.id)
    assert len(meta["filename"]) <= 1024 and len(meta["path"]) <= 1025 and len(meta["web_url"]) <= 4096
    assert "failed 0" in project.cli("sync", "sp", check=True).stdout
    # another overlong tag with the same first 100,000 characters is another version
    drive.put_file("/long.txt", b"v2")
    graph.tamper("long.txt", name="n" * 100_000, cTag="c" * 100_000 + "2", webUrl="u" * 100_000)
    assert "updated 1" in project.cli("sync", "sp", check=True).stdout
    assert max(len(member) for member in redis_client.zrange("kmrl:{sp}:known", 0, -1)) < 400
