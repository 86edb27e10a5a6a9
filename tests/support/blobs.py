"""Reading a document's `blob` as a worker does: an absolute file:// URI, from any working directory."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote_to_bytes, urlsplit


def blob_path(uri: str) -> Path:
    """The local path a `file://` blob URI names; fails on anything else (a bare or relative path)."""
    parts = urlsplit(uri)
    assert parts.scheme == "file" and parts.netloc in ("", "localhost"), f"not a file:// URI: {uri!r}"
    path = Path(os.fsdecode(unquote_to_bytes(parts.path)))
    assert path.is_absolute(), f"not absolute: {uri!r}"
    return path


def read_blob(uri: str) -> bytes:
    return blob_path(uri).read_bytes()
