"""Filesystem connector (type `filesystem`): connector.py walks and joins, hashing.py reads and
hashes, watch.py follows a tree with inotify.

Nothing is imported here: `hashing` is imported on its own by the hashing worker processes, which
must not pay for the connector's imports (pydantic, redis, structlog: a quarter of a second each).
"""
