"""Exceptions that carry a user-facing message.

Anything raised as :class:`NLBenchError` is a mistake the user can fix (a wrong name, an impossible rate, a
missing file). The CLI prints its message on one line and exits with code 2; everything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, candidates: Iterable[str], *, cutoff: float = 0.5) -> str:
    """`` Did you mean 'x'?`` for the closest candidate to a mistyped ``name`` (empty if none is close), the
    hint every "unknown name" message carries."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return f" Did you mean {close[0]!r}?" if close else ""


class NLBenchError(Exception):
    """A user-facing error: the CLI prints ``str(err)`` and exits with code 2."""


class UnknownNameError(NLBenchError, KeyError, ValueError):
    """A registry lookup failed. Subclasses KeyError/ValueError so library callers can catch either."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DataError(NLBenchError):
    """A data file is missing, truncated or corrupted; the message names the file and the fix."""


class DivergenceError(NLBenchError):
    """Training produced a non-finite loss."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch
