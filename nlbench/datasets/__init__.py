"""Dataset registry.

A loader is registered with ``@register_dataset("name")`` and called as
``loader(root: Path | None, download: bool = False, **options) -> Dataset``, where ``root`` is the resolved
data root (see :func:`nlbench.datasets.base.resolve_root`).
"""

from __future__ import annotations

import inspect
import os

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
    return loader(resolve_root(data_root), download=download, **options)


# Importing the modules runs their decorators.
from nlbench.datasets import binary, cifar, fashion_mnist, synthetic  # noqa: E402,F401

__all__ = ["DATASETS", "Dataset", "list_datasets", "load_dataset", "register_dataset"]
