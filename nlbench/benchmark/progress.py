"""The one progress bar of the run and grid loops."""

from __future__ import annotations

import sys


class ProgressBar:
    """A rich progress bar on a terminal; silent otherwise (logs stay clean in CI, workers and pipes)."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.bar = None
        if enabled and total and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task(label, total=total, status="")

    def advance(self, status: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, **({"status": status} if status else {}))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
