"""Which documents failed, and why: kept per connector, shown by `status NAME` and `status --json`,
gone once the document is committed, cleared by `reset`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (root / "big.bin").write_bytes(b"x" * 5000)
    (root / "a[red]b.bin").write_bytes(b"y" * 6000)  # a name that is rich markup
    return root


def _failed(project, name: str = "fs") -> list[dict]:
    report = json.loads(project.cli("status", name, "--json", check=True).stdout)
    [connector] = report["connectors"]
    return connector["failed_documents"]


def test_failed_documents_are_listed_until_committed(project, tree: Path) -> None:
    project.filesystem("fs", tree, "max_file_mb: 0.004\n")  # 4 KiB

    first = project.cli("sync", "fs")
    assert first.returncode == 1 and "partial" in first.stdout
    failed = {d["document"]: d for d in _failed(project)}
    assert set(failed) == {"fs:big.bin", "fs:a[red]b.bin"}
    assert failed["fs:big.bin"]["reason"] == "larger than max_file_mb (5000 bytes)"
    assert failed["fs:big.bin"]["attempts"] == 1 and failed["fs:big.bin"]["since"] == failed["fs:big.bin"]["last"]

    project.cli("sync", "fs")
    again = {d["document"]: d for d in _failed(project)}
    assert again["fs:big.bin"]["attempts"] == 2 and again["fs:big.bin"]["since"] == failed["fs:big.bin"]["since"]

    (tree / "big.bin").write_bytes(b"x" * 100)  # fixed: the next run commits it
    project.cli("sync", "fs")
    assert [d["document"] for d in _failed(project)] == ["fs:a[red]b.bin"]

    project.cli("reset", "fs", check=True)
    assert _failed(project) == []


def test_status_with_names_shows_them_in_detail(project, tree: Path) -> None:
    (tree / "bell\x07\x1b[31mred.bin").write_bytes(b"z" * 7000)  # a name that would steer a terminal
    project.filesystem("fs", tree, "max_file_mb: 0.004\n")
    project.filesystem("other", tree)
    project.cli("sync", "--all")

    # Wide enough that no cell wraps: a longer temporary path (pytest-xdist's) wrapped the name's cell.
    detail = project.cli("status", "fs", check=True, env={"COLUMNS": "250"})
    overview = project.cli("status", check=True)
    both = json.loads(project.cli("status", "--json", check=True).stdout)

    assert "fs:a[red]b.bin" in detail.stdout and "larger than max_file_mb (6000 bytes)" in detail.stdout
    assert "fs:big.bin" in detail.stdout and "other" not in detail.stdout.replace("fs", "")
    assert "fs:bell\\x07\\x1b[31mred.bin" in detail.stdout and "\x1b" not in detail.stdout + overview.stdout
    assert "3 failed document(s)" in overview.stdout and "kmrl-sync status fs" in overview.stdout
    assert {c["name"]: len(c["failed_documents"]) for c in both["connectors"]} == {"fs": 3, "other": 0}
    [fs] = [c for c in both["connectors"] if c["name"] == "fs"]
    assert "fs:bell\x07\x1b[31mred.bin" in {d["document"] for d in fs["failed_documents"]}  # JSON: exact
    unknown = project.cli("status", "nope")
    assert unknown.returncode == 2 and "unknown connector(s): nope" in unknown.stderr
