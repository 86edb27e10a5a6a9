"""Watch mode for folders: inotify (through watchdog) tells the daemon a sync is worth running.

Only the fact "something relevant changed" is passed on: the sync itself still walks the tree and
merge-joins it with what Redis knows, so a lost, duplicated or reordered event can never make the
state wrong, only a little late (the regular schedule is the safety net). Events are filtered with
the connector's include/exclude globs, and open/close-without-write events are ignored: the sync's
own reads must not trigger another sync.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from kmrl_sync.config.globs import PathFilter

RELEVANT = {EVENT_TYPE_CREATED, EVENT_TYPE_DELETED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED}


def _relative(root: str, path: str | bytes) -> str | None:
    text = os.fsdecode(path)
    if text != root and not text.startswith(root + os.sep):
        return None  # moved out of the tree: only the source side matters
    rel = os.path.relpath(text, root)
    return None if rel == "." else rel.replace(os.sep, "/")


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, path_filter: PathFilter, notify: Callable[[], None]):
        self.root = root
        self.filter = path_filter
        self.notify = notify

    def relevant(self, event: FileSystemEvent) -> bool:
        if event.event_type not in RELEVANT:
            return False
        if event.is_directory and event.event_type in (EVENT_TYPE_MODIFIED, EVENT_TYPE_CLOSED):
            return False  # a folder's own mtime moves with every child; the child's event counts
        paths = [event.src_path]
        if event.event_type == EVENT_TYPE_MOVED:
            paths.append(event.dest_path)
        for path in paths:
            rel = _relative(self.root, path)
            if rel is None:
                continue
            if event.is_directory:
                if not self.filter.prunes_dir(rel):
                    return True
            elif self.filter.wants_file(rel):
                return True
        return False

    def on_any_event(self, event: FileSystemEvent) -> None:
        if self.relevant(event):
            self.notify()


def watch_tree(root: Path, path_filter: PathFilter, notify: Callable[[], None], stop: threading.Event,
               log: Any) -> None:
    """Call `notify()` for every relevant change under `root` until `stop` is set.

    Raises OSError when the watch cannot be set up (missing root, inotify watch limit reached:
    raise `fs.inotify.max_user_watches`); the caller logs it and retries later.
    """
    real_root = os.path.realpath(root)
    observer = Observer()
    observer.schedule(_Handler(real_root, path_filter, notify), real_root, recursive=True)
    observer.start()
    log.info("watching folder", root=real_root)
    try:
        while not stop.wait(1.0):
            if not observer.is_alive():
                raise OSError(f"the inotify observer for {real_root} stopped")
    finally:
        observer.stop()
        observer.join(timeout=5)
