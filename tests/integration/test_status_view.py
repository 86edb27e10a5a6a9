"""`kmrl-sync status` as an operator reads it: nothing cut at 80 or 120 columns, and JSON with
numbers as numbers (the findings: names and times truncated below ~180 columns; last-run counts
given as strings)."""

from __future__ import annotations

import json
import socket

import pytest

LONG_NAME = "shared-drive-engineering-drawings-archive-2019"


@pytest.fixture
def synced(project, tmp_path, redis_client):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(str(i))
    (docs / "big.bin").write_bytes(b"too large")
    project.filesystem(LONG_NAME, docs)
    project.filesystem("mail", docs, "max_file_mb: 0.000001\n")  # 1 byte: big.bin fails, d*.txt pass
    project.cli("sync", "--all")
    # a live holder elsewhere, with a long host name
    redis_client.hset(f"kmrl:{{{LONG_NAME}}}:lease", mapping={
        "token": "t", "run_id": "abc123def456", "acquired_at": "2026-01-01T00:00:00.000Z",
        "host": "build-agent-0042.ci.kmrl.internal", "pid": "4242", "boot": "b" * 32, "pidns": "4026532175",
        "start": "12345"})
    redis_client.pexpire(f"kmrl:{{{LONG_NAME}}}:lease", 600_000)
    return project


@pytest.mark.parametrize("columns", [80, 120, None])
def test_status_fits_the_width_and_cuts_nothing(synced, columns):
    env = {"COLUMNS": str(columns)} if columns else {}
    out = synced.cli("status", env=env, check=True).stdout
    assert "…" not in out and "..." not in out
    width = columns or 220  # piped without COLUMNS: the wide table
    assert all(len(line) <= width for line in out.splitlines()), out
    flat = "".join(out.split())  # values folded over lines are still whole
    report = json.loads(synced.cli("status", "--json", check=True).stdout)
    finished = [c["last_run"]["finished"] for c in report["connectors"]]
    for value in (LONG_NAME, "mail", "every 1m", "build-agent-0042.ci.kmrl.internal:4242",
                  "(PID namespace 4026532175)", "+4 ~0 -0 =0 !0", "+3 ~0 -0 =0 !1", "partial", *finished,
                  "mail: last error: mail:big.bin: larger than max_file_mb (9 bytes)"):
        assert "".join(value.split()) in flat, (value, out)


def _types(value, path="$"):
    """Every leaf of a JSON document as (path, type name), lists and dicts walked."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _types(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _types(item, f"{path}[]")
    else:
        yield path, type(value).__name__


def test_status_json_gives_numbers_as_numbers(synced, redis_client):
    redis_client.hset("kmrl:daemons", f"{socket.gethostname()}:1", json.dumps(
        {"host": socket.gethostname(), "pid": 1, "started": "2026-01-01T00:00:00Z", "boot": "b", "pidns": "7",
         "start": "99"}))
    report = json.loads(synced.cli("status", "--json", check=True).stdout)
    numbers = {"known_documents", "lag_seconds", "created", "updated", "deleted", "unchanged", "failed", "seconds",
               "pid", "ttl_ms", "pid_namespace", "process_start", "connected_clients", "attempts"}
    flags = {"ok", "enabled", "alive"}
    seen = set()
    for path, kind in _types(report):
        leaf = path.rsplit(".", 1)[-1].removesuffix("[]")
        seen.add(leaf)
        if kind == "NoneType":
            continue
        if leaf in numbers:
            assert kind in ("int", "float"), (path, kind)
            if leaf not in ("lag_seconds", "seconds"):
                assert kind == "int", (path, kind)
        elif leaf in flags:
            assert kind == "bool", (path, kind)
        else:
            assert kind == "str", (path, kind)  # names, times, ids, results, errors: text
    assert {"created", "seconds", "pid_namespace", "process_start", "ttl_ms", "alive"} <= seen
    [long, mail] = sorted(report["connectors"], key=lambda c: c["name"] != LONG_NAME)
    assert long["last_run"]["created"] == 4 and mail["last_run"]["failed"] >= 1
    assert long["lease"]["pid_namespace"] == 4026532175 and long["lease"]["process_start"] == 12345
    [daemon] = report["daemons"]
    assert daemon["pid_namespace"] == 7 and daemon["process_start"] == 99 and daemon["alive"] is False
