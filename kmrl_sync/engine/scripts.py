"""The Lua scripts, loaded once per client through redis-py's `register_script`.

`Script` objects send EVALSHA and transparently re-load after NOSCRIPT (a Redis restart or a
SCRIPT FLUSH), so callers never handle that case.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import redis
from redis.commands.core import Script

NAMES = ("commit_batch", "list_known", "sent_versions", "acquire_lease", "renew_lease", "release_lease",
         "reset_connector")


def lua_source(name: str) -> str:
    return resources.files("kmrl_sync.engine.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Scripts:
    commit_batch: Script
    list_known: Script
    sent_versions: Script
    acquire_lease: Script
    renew_lease: Script
    release_lease: Script
    reset_connector: Script

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(lua_source(name)) for name in NAMES})
