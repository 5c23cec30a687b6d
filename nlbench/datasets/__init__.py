"""Dataset registry.

A loader is registered with ``@register_dataset("name", default_model="lenet")`` and called as
``loader(root: Path | None, download: bool = False, **options) -> Dataset``, where ``root`` is the resolved
data root (see :func:`nlbench.datasets.base.resolve_root`).
"""

from __future__ import annotations

import os

from nlbench.datasets.base import Dataset, resolve_root
from nlbench.options import bind_options
from nlbench.registry import Registry

DATASETS: Registry = Registry("dataset")
#: The model a dataset trains with unless ``model`` is given, declared where the dataset is registered.
DEFAULT_MODELS: dict[str, str] = {}
#: The model of a dataset that declares none (and of a name that is not registered).
FALLBACK_MODEL = "resnet32"


def register_dataset(name: str, *, default_model: str = FALLBACK_MODEL, aliases: tuple[str, ...] = ()):
    """Register a loader under ``name``; ``default_model`` is the model its runs use unless told otherwise."""
    DEFAULT_MODELS[name] = default_model
    return DATASETS.register(name, aliases=aliases)


def default_model(dataset: str) -> str:
    """The default model of ``dataset`` (aliases resolved; :data:`FALLBACK_MODEL` for an unknown name, which
    the run then refuses with the list of datasets)."""
    try:
        return DEFAULT_MODELS.get(DATASETS.canonical(dataset), FALLBACK_MODEL)
    except Exception:  # an unknown name: the loader lookup reports it, with a close match
        return FALLBACK_MODEL


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

__all__ = ["DATASETS", "Dataset", "default_model", "list_datasets", "load_dataset", "register_dataset"]
