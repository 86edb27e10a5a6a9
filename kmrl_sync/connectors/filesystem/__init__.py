"""Filesystem connector (type `filesystem`); see connector.py for the walk, hashing.py for content
hashes and watch.py for watch mode."""

from kmrl_sync.connectors.filesystem.connector import FilesystemConnector

__all__ = ["FilesystemConnector"]
