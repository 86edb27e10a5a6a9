"""Redis memory limits: telling a write Redis refused for lack of memory from other errors, and
saying so in one sentence an operator can act on.

With `maxmemory` set and `maxmemory-policy noeviction` (the setting the README asks for), a full
Redis refuses writes that need memory. A Lua script is refused only at its first write that needs
memory, and only when Redis was already full as the script started; once it has written, Redis lets
the rest through, so a commit of 500 documents started just under the limit would end far over it.
commit_batch.lua therefore checks, before its first write, that the batch fits (its own estimate
against `INFO memory`) and refuses the whole batch when it does not: the reply is an `OOM KMRL_MEMORY
...` error carrying the figures. This module turns that reply, and Redis' own OOM error (which the
other writes of a run can meet), into `RedisOutOfMemory`, and gives `health` and `check --connect`
the same test of whether Redis is refusing writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis

# Redis' own refusal (redis-py drops the leading "OOM " of the error code in some paths).
REDIS_OOM_TEXT = "command not allowed when used memory > 'maxmemory'"
# Our commit script's refusal: "KMRL_MEMORY used=<bytes> maxmemory=<bytes> needed=<bytes> policy=<policy>".
GUARD_MARK = "KMRL_MEMORY"
_GUARD_FIGURES = re.compile(r"KMRL_MEMORY used=(\d+) maxmemory=(\d+) needed=(\d+) policy=(\S+)")

ADVICE = "raise maxmemory or free space"


class RedisOutOfMemory(RuntimeError):
    """Redis refused a write for lack of memory; nothing of that write was applied.

    Not a `redis.RedisError` on purpose: callers treat those as "Redis unreachable, retry later",
    while this needs a human (more memory, or less data) and is reported as such.
    """


@dataclass(frozen=True, slots=True)
class MemoryState:
    used: int  # used_memory minus what Redis does not count against maxmemory (replica and AOF buffers)
    maxmemory: int  # 0 = no limit
    policy: str

    @property
    def refusing_writes(self) -> bool:
        """True when Redis refuses writes that need memory right now.

        Under `allkeys-*` Redis evicts instead of refusing; under `noeviction` and `volatile-*` a
        Redis past its limit (nothing left to evict) refuses.
        """
        return bool(self.maxmemory) and not self.policy.startswith("allkeys-") and self.used >= self.maxmemory


def memory_state(info: dict[str, Any]) -> MemoryState:
    """From the fields of `INFO` (or `INFO memory`) as redis-py parses them."""
    used = int(info.get("used_memory") or 0) - int(info.get("mem_not_counted_for_evict") or 0)
    return MemoryState(used=used, maxmemory=int(info.get("maxmemory") or 0),
                       policy=str(info.get("maxmemory_policy") or ""))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for Redis' OOM refusal (of a command, or of a script's write) and for our script's own."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.ResponseError) and (REDIS_OOM_TEXT in str(exc) or GUARD_MARK in str(exc))


def size_text(size: int) -> str:
    """Bytes as Redis' configuration writes them: 10485760 -> '10mb', 1610612736 -> '1.5gb'."""
    for unit, step in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10)):
        if size >= step:
            return f"{round(size / step, 1):g}{unit}"
    return f"{size}b"


def refusal(exc: BaseException, what: str, client: redis.Redis | None = None) -> RedisOutOfMemory:
    """The `RedisOutOfMemory` to raise for `exc`, naming the limit, the policy and what was refused.

    The figures come from our script's reply when it refused, else from `INFO memory` (best effort:
    INFO needs no memory, but the connection may be gone too).
    """
    figures = _GUARD_FIGURES.search(str(exc))
    needed = None
    if figures:
        state = MemoryState(int(figures[1]), int(figures[2]), figures[4])
        needed = int(figures[3])
    else:
        state = None
        if client is not None:
            try:
                state = memory_state(client.info("memory"))
            except redis.RedisError:
                state = None
    if state is None:
        return RedisOutOfMemory(f"Redis is out of memory: {what} refused; {ADVICE}")
    detail = f"used {size_text(state.used)} of maxmemory {size_text(state.maxmemory)}, policy {state.policy}"
    need = f" (it needs about {size_text(needed)})" if needed else ""
    return RedisOutOfMemory(f"Redis is out of memory ({detail}): {what} refused{need}; {ADVICE}")


def health_problem(info: dict[str, Any]) -> str | None:
    """The sentence `health` and `check --connect` print while Redis refuses writes, else None."""
    state = memory_state(info)
    if not state.refusing_writes:
        return None
    return (f"Redis is out of memory (used {size_text(state.used)} of maxmemory {size_text(state.maxmemory)}, "
            f"policy {state.policy}): it refuses writes, so no sync can commit; {ADVICE}")
