"""Dataset registry.

A loader is registered with ``@register_dataset("name")`` and called as
``loader(root: Path | None, download: bool = False, **options) -> Dataset``, where ``root`` is the resolved
data root (see :func:`nlbench.datasets.base.resolve_root`).
"""

from __future__ import annotations

import inspect
import numbers
import os
import types
import typing
from pathlib import Path

from nlbench.datasets.base import Dataset, resolve_root
from nlbench.errors import NLBenchError
from nlbench.registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def load_dataset(name: str, data_root: str | os.PathLike | None = None, *, download: bool = False,
                 **options) -> Dataset:
    """Load dataset ``name``; raises :class:`~nlbench.errors.UnknownNameError` or
    :class:`~nlbench.errors.DataError` with a message that says what to do; an option the loader does not take
    (a ``--data-opt`` typo) raises :class:`~nlbench.errors.NLBenchError` listing the valid ones."""
    loader = DATASETS.get(name)
    sig = inspect.signature(loader)
    try:  # checked before the call, so a TypeError raised inside a loader is never blamed on the user
        sig.bind(None, download=download, **options)
    except TypeError:
        valid = [p for p in sig.parameters if p not in ("root", "download")]
        unknown = sorted(set(options) - set(valid))
        raise NLBenchError(f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; valid: "
                           f"{', '.join(valid) or 'none'}") from None
    hints = typing.get_type_hints(loader)
    for key, value in options.items():
        if key in hints and not _matches(value, hints[key]):
            hint = hints[key].__name__ if isinstance(hints[key], type) else str(hints[key]).replace("typing.", "")
            raise NLBenchError(f"dataset option {key}={value!r} for {name!r} must be of type {hint}")
    return loader(resolve_root(data_root), download=download, **options)


def _matches(value, hint) -> bool:
    """Whether a ``--data-opt`` value (parsed from JSON) fits a loader's annotation; types this check does not
    know pass, and the loader has the last word."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, str | os.PathLike)
    if hint in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    return True


# Importing the modules runs their decorators.
from nlbench.datasets import binary, cifar, fashion_mnist, synthetic  # noqa: E402,F401

__all__ = ["DATASETS", "Dataset", "list_datasets", "load_dataset", "register_dataset"]
