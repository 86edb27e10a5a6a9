"""Connector types are plug-ins declared by entry point (group `kmrl_sync.connectors`), each a
subclass of the engine's `Connector` (connector.py): the engine runs them, they build on it.

Built-in types register through the same entry points as third-party ones, so there is exactly one
discovery path. A type is imported only when a config uses it: the Graph client stack must not slow
down a mail-only daemon's start-up.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points

from kmrl_sync.engine.connector import Connector

GROUP = "kmrl_sync.connectors"


class UnknownConnectorType(LookupError):
    pass


@cache
def available_types() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@cache
def load_connector_type(name: str) -> type[Connector]:
    types = available_types()
    if name not in types:
        installed = ", ".join(sorted(types)) or "none"
        raise UnknownConnectorType(f"unknown connector type {name!r} (installed: {installed})")
    try:
        obj = types[name].load()
    except Exception as exc:
        raise UnknownConnectorType(f"connector type {name!r} failed to load: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Connector)):
        raise UnknownConnectorType(
            f"connector type {name!r} ({types[name].value}) is not a subclass of kmrl_sync.engine.connector.Connector"
        )
    return obj
