"""Lighter imports of third-party packages, for the command line's start-up.

A no-change `kmrl-sync sync` is mostly start-up, and most of start-up is importing the chosen
dependencies (see bench/README.md). Three of their import-time costs buy this process nothing;
each is avoided here without changing what the package does once imported:

- redis-py's package imports its whole asyncio client (cluster, sentinel, connection, ~50 modules)
  although the sync client needs none of it. `defer_async_redis` leaves `redis.asyncio` as a
  package whose body runs on first use of one of its names.
- PyYAML compiles a regular expression of every printable code point while importing (6 ms, a fifth
  of all regex compilation at start-up). `import_yaml` hands it an equivalent expression, written as
  the complement's seven ranges, that compiles in a tenth of the time.
- structlog imports rich (~80 ms) only to pretty-print console tracebacks; `import_structlog` hides
  it while structlog loads.

Each falls back to the plain import when the package is not laid out as expected.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
import threading
from types import ModuleType
from typing import Any

# yaml.reader.Reader.NON_PRINTABLE, and the same set of code points as a positive class.
YAML_NON_PRINTABLE = "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
NON_PRINTABLE_RANGES = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff]"


def defer_async_redis() -> None:
    """Make `import redis` skip `redis.asyncio`'s body until something uses a name from it.

    Submodules (`redis.asyncio.client`, ...) still import normally, since the placeholder is the
    real package's module object with its `__path__`; its body runs on the first attribute that is
    missing (PEP 562), so `redis.asyncio.Redis` and `from redis.asyncio import Redis` still work.
    """
    if "redis" in sys.modules or "redis.asyncio" in sys.modules:
        return
    try:
        redis_spec = importlib.util.find_spec("redis")
        locations = redis_spec.submodule_search_locations if redis_spec else None
        spec = importlib.machinery.PathFinder.find_spec("redis.asyncio", locations) if locations else None
    except (ImportError, ValueError):
        return
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    # Threads that first use it together wait for one of them to run the body; the lock is
    # re-entrant, and `started` keeps the body's own lookups (same thread) from running it again.
    loading = threading.RLock()
    started = False

    def __getattr__(name: str) -> Any:
        nonlocal started
        if name.startswith("__") and name != "__all__":  # the import system probing, not a use
            raise AttributeError(name)
        with loading:
            if not started:
                started = True
                try:
                    loader.exec_module(module)  # type: ignore[union-attr]
                except BaseException:
                    started = False
                    raise
                del module.__dict__["__getattr__"]
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'redis.asyncio' has no attribute {name!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["redis.asyncio"] = module


def import_yaml() -> ModuleType:
    if "yaml" in sys.modules:
        return sys.modules["yaml"]
    original = re.compile

    def compile_faster(pattern: Any, flags: int = 0) -> re.Pattern[Any]:
        if pattern == YAML_NON_PRINTABLE:
            pattern = NON_PRINTABLE_RANGES
        return original(pattern, flags)

    re.compile = compile_faster  # type: ignore[assignment]
    try:
        import yaml
    finally:
        re.compile = original
    return yaml


def import_structlog() -> ModuleType:
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    hidden = "rich" not in sys.modules
    if hidden:
        sys.modules["rich"] = None  # type: ignore[assignment]  # makes `import rich` raise ImportError
    try:
        import structlog
    finally:
        if hidden:
            del sys.modules["rich"]
    return structlog
