"""The tests' own redis-server launcher: a picked port someone else took is picked again."""

from __future__ import annotations

import socket

import pytest

from tests.support import redis_server as support
from tests.support.redis_server import RedisServer


def test_a_port_taken_between_picking_and_binding_is_picked_again(tmp_path, monkeypatch, redis_server):
    """As when another pytest-xdist worker starts a server on the port just picked: here one port
    is held by a plain socket (the server cannot bind it), the next by another redis-server (which
    would answer the ping); the server starts on the third and answers as itself."""
    holder = socket.create_server(("127.0.0.1", 0))
    ports, pick = iter([holder.getsockname()[1], redis_server.port]), support.free_port
    monkeypatch.setattr(support, "free_port", lambda: next(ports, 0) or pick())
    server = RedisServer(tmp_path / "r").start()
    try:
        assert server.port not in (holder.getsockname()[1], redis_server.port)
        assert server.client().info("server")["process_id"] == server.process.pid
    finally:
        server.stop()
        holder.close()


def test_a_port_given_by_the_caller_is_not_replaced(tmp_path, redis_server):
    with pytest.raises(RuntimeError, match="another redis-server"):
        RedisServer(tmp_path / "r", port=redis_server.port).start()

