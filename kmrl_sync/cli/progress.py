"""Progress on a TTY for one-shot syncs (rich), on stderr so stdout keeps only the summary."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from kmrl_sync.display import visible


class ProgressDisplay:
    def __init__(self) -> None:
        self._progress: Progress | None = None
        self._task: Any = None

    def start(self, name: str) -> None:
        self._progress = Progress(
            # markup=False: the description is the connector's name, data (display.py)
            SpinnerColumn(), TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
            TextColumn("{task.fields[counts]}", markup=False), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(visible(name), total=None, counts="scanning")

    def update(self, name: str, summary: Any, total: int | None) -> None:
        if self._progress is None:
            return
        done = summary.created + summary.updated + summary.deleted + summary.unchanged + summary.failed
        counts = (f"+{summary.created} ~{summary.updated} -{summary.deleted} "
                  f"={summary.unchanged} !{summary.failed}")
        self._progress.update(self._task, completed=done, total=total, counts=counts)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
