"""One way to validate user options: method ``--opt`` and dataset ``--data-opt`` values alike.

An option is a keyword parameter of a method's ``__init__`` (or a dataset loader). Its annotation says what it
takes, and an ``Annotated`` :class:`Range` or :class:`Choice` adds the allowed values::

    def __init__(self, *, q: Annotated[float, Range(0, 1, low_open=True)] = 0.7,
                 mode: Annotated[str, Choice("soft", "hard")] = "soft"): ...

:func:`bind_options` checks names against the signature (an unknown name lists the valid ones and the closest
match), converts strings from the command line to the annotated type, refuses non-finite numbers everywhere,
and applies the ranges. Every failure is one :class:`~nlbench.errors.NLBenchError` line naming the option.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlbench.errors import NLBenchError, did_you_mean

__all__ = ["Choice", "Range", "bind_options", "check_value"]


@dataclass(frozen=True)
class Range:
    """Allowed numeric interval; ``None`` leaves a side open-ended. ``low_open``/``high_open`` exclude an end."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return not (self.high is not None and (v > self.high or (self.high_open and v == self.high)))

    def __str__(self) -> str:
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Choice:
    """Allowed values of a string option (or of one alternative of a union, e.g. ``int | "batch"``)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, converted)``: ``value`` (parsed JSON or a raw string from the CLI) as an instance of ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        ok, out = _convert(value, args[0])
        if not ok:
            return False, value
        for meta in hint.__metadata__:
            if isinstance(meta, Choice) and out not in meta.values:
                return False, value
        return True, out
    if origin in (typing.Union, types.UnionType):
        for a in args:  # bool and int before str: "3" on the CLI means 3 where an int is allowed
            ok, out = _convert(value, a)
            if ok:
                return True, out
        return False, value
    if origin is typing.Literal:
        return (value in args), value
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None or value == "none", None
    if hint is bool:
        if isinstance(value, bool):
            return True, value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return True, value.lower() == "true"
        return False, value
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True, int(value)
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
            return True, int(value)
        return False, value
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    if hint is Path:
        return isinstance(value, str | os.PathLike), value
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False, value
            pairs = [_convert(v, a) for v, a in zip(value, args, strict=True)]
        else:
            pairs = [_convert(v, args[0]) if args else (True, v) for v in value]
        return all(ok for ok, _ in pairs), type(value)(out for _, out in pairs)
    return True, value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        choices = [m for m in hint.__metadata__ if isinstance(m, Choice)]
        if choices:
            return "one of " + ", ".join(map(str, choices[0].values))
        return _describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "none"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _ranges(hint: Any) -> list[Range]:
    out = []
    if typing.get_origin(hint) is typing.Annotated:
        out += [m for m in hint.__metadata__ if isinstance(m, Range)]
    for a in typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ():
        out += _ranges(a)
    return out


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return True


def check_value(label: str, value: Any, hint: Any) -> Any:
    """``value`` converted to ``hint`` and checked (type, finiteness, ranges), or one-line NLBenchError."""
    ok, out = _convert(value, hint)
    if not ok:
        raise NLBenchError(f"{label} must be {_describe(hint)}, got {value!r}")
    if not _finite(out):
        raise NLBenchError(f"{label} must be finite, got {value!r}")
    if isinstance(out, numbers.Real) and not isinstance(out, bool):
        for r in _ranges(hint):
            if not r.contains(out):
                raise NLBenchError(f"{label} must be in {r}, got {value!r}")
    return out


def bind_options(fn: Callable, options: dict[str, Any], owner: str, *, skip: tuple[str, ...] = ("self",)
                 ) -> dict[str, Any]:
    """Check ``options`` against the keyword parameters of ``fn`` and return them converted.

    ``owner`` names what the options are for in messages (``"method 'gce'"``); ``skip`` lists parameters that
    are not user options (``root``, ``download`` of a loader).
    """
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)
    params = {n: p for n, p in sig.parameters.items()
              if n not in skip and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params:
            if accepts_any:
                out[key] = value
                continue
            hint = did_you_mean(key, params)
            raise NLBenchError(f"unknown option {key!r} for {owner}.{hint} Valid: {', '.join(params) or 'none'}")
        out[key] = check_value(f"{owner}: option {key}", value, hints.get(key, Any))
    return out
