"""The one progress display of the run and grid loops.

On a terminal (stdout is a tty) it is a rich progress bar: a run's bar shows the steps, the epoch, its training
loss and the last test accuracy; a grid's bar shows the runs done, failed and left, with the time remaining. Off a
terminal (CI, ``make run > log``, a Ray worker's log) there is no bar: a run prints one plain line per epoch and a
grid one per finished run, on stdout and flushed at once, so a log shows progress while it happens::

    epoch 3/30 train_loss 0.4123 test_acc 81.20% (elapsed 0m52s, ETA 7m48s)
    grid smoke: 3/18 runs finished (3 done, 0 failed), 15 left (elapsed 0m04s, ETA 0m20s): synthetic__erm__...
"""

from __future__ import annotations

import math
import sys
import time


def fmt_duration(seconds: float) -> str:
    """``75.4`` -> ``"1m15s"``, ``3725`` -> ``"1h02m05s"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class ProgressBar:
    """Progress of one run (``epochs`` given: ``total`` counts steps) or of a grid (``total`` counts runs).

    The harness calls :meth:`advance` once per step and :meth:`epoch_done` after each epoch's evaluation; the
    grid calls :meth:`advance` once per finished run, with ``failed=True`` for a failed or erroring one.
    Disabled (``enabled=False`` or nothing to do), it shows nothing.
    """

    def __init__(self, enabled: bool, total: int, label: str, *, epochs: int | None = None):
        self.bar = None
        self.lines = False
        self.total, self.label, self.epochs = total, label, epochs
        self.count = self.failed = 0
        self.t0 = time.monotonic()
        if not (enabled and total):
            return
        if not sys.stdout.isatty():
            self.lines = True
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), transient=True)
        self.bar.start()
        self.task = self.bar.add_task(label, total=total, status=self._status())

    def _status(self) -> str:
        if self.epochs is not None:
            return f"epoch 1/{self.epochs}"
        return f"{self.count - self.failed} done, {self.failed} failed, {self.total - self.count} left"

    def _eta(self, done: float, total: float) -> str:
        elapsed = time.monotonic() - self.t0
        eta = elapsed / done * (total - done) if done else math.nan
        return f"elapsed {fmt_duration(elapsed)}, ETA {fmt_duration(eta)}"

    def advance(self, status: str | None = None, *, failed: bool = False) -> None:
        """One step of a run, or one finished run of a grid (``status``: its name, shown in the log line)."""
        self.count += 1
        self.failed += bool(failed)
        if self.epochs is not None:  # a run: steps move the bar, epochs are reported by epoch_done
            if self.bar is not None:
                self.bar.update(self.task, advance=1)
            return
        if self.bar is not None:
            self.bar.update(self.task, advance=1, status=self._status())
        elif self.lines:
            print(f"{self.label}: {self.count}/{self.total} runs finished ({self.count - self.failed} done, "
                  f"{self.failed} failed), {self.total - self.count} left ({self._eta(self.count, self.total)})"
                  + (f": {status}" if status else ""), flush=True)

    def epoch_done(self, epoch: int, train_loss: float, test_acc: float) -> None:
        """A run finished and evaluated ``epoch`` (from 1): show its training loss and test accuracy."""
        if self.bar is not None:
            self.bar.update(self.task, status=f"epoch {epoch}/{self.epochs} loss {train_loss:.4f} test "
                                              f"{100 * test_acc:.2f}%")
        elif self.lines:
            print(f"epoch {epoch}/{self.epochs} train_loss {train_loss:.4f} test_acc {100 * test_acc:.2f}% "
                  f"({self._eta(epoch, self.epochs or epoch)})", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
