"""Dataset registry.

A loader is registered with ``@register_dataset("name")`` and called as
``loader(root: Path | None, download: bool = False, **options) -> Dataset``, where ``root`` is the resolved
data root (see :func:`nlbench.datasets.base.resolve_root`).
"""

from __future__ import annotations

import os

from nlbench.datasets.base import Dataset, resolve_root
from nlbench.options import bind_options
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
    # checked before the call (names, types, finiteness, the loaders' Annotated ranges), so a TypeError raised
    # inside a loader is never blamed on the user and an option out of range costs nothing
    options = bind_options(loader, options, f"dataset {name!r}", skip=("root", "download"))
    return loader(resolve_root(data_root), download=download, **options)


# Importing the modules runs their decorators.
from nlbench.datasets import binary, cifar, cifar_jpeg, clothing1m, fashion_mnist, synthetic  # noqa: E402,F401

__all__ = ["DATASETS", "Dataset", "list_datasets", "load_dataset", "register_dataset"]
