"""lua/rate_limit.lua against the real Redis: a shared token bucket and a shared pause."""

from __future__ import annotations

from kmrl_sync.connectors.sharepoint.ratelimit import SharedRateLimiter
from kmrl_sync.engine.keys import ratelimit_key
from kmrl_sync.engine.scripts import lua_source


def test_bucket_grants_burst_then_asks_to_wait(redis_client):
    key = ratelimit_key("kmrl", "tenant-1")
    assert key == "kmrl:{sharepoint:tenant-1}:ratelimit"
    script = redis_client.register_script(lua_source("rate_limit"))
    replies = [int(script(keys=[key], args=[5, 5, "take", 0])) for _ in range(6)]
    assert replies[:5] == [0] * 5
    assert 1 <= replies[5] <= 200  # one permit refills in 200 ms at 5/s
    # running it again is harmless: a refused ask consumes nothing
    again = int(script(keys=[key], args=[5, 5, "take", 0]))
    assert 1 <= again <= 200


def test_pause_is_seen_by_every_process_of_the_tenant(redis_client):
    key = ratelimit_key("kmrl", "tenant-2")
    one = SharedRateLimiter(redis_client, key, rate=100)
    two = SharedRateLimiter(redis_client, key, rate=100)
    one.pause(5)
    wait = int(two.script(keys=[key], args=[100, 100, "take", 0]))
    assert 4000 <= wait <= 5000
    end = int(two.script(keys=[key], args=[100, 100, "pause", 1000]))  # a shorter pause never shortens it
    assert end == int(one.script(keys=[key], args=[100, 100, "pause", 0]))
    other = ratelimit_key("kmrl", "tenant-3")
    assert int(one.script(keys=[other], args=[100, 100, "take", 0])) == 0  # other tenants unaffected
