"""The in-memory dataset container every loader returns.

The harness keeps whole splits as tensors on the device (airbench style), so a loader's only job is to return
them once: images as uint8 ``(N, C, H, W)``, or float32 ``(N, d)`` feature vectors for synthetic data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nlbench.errors import DataError

#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_DATASETS = Path("/usr/share/datasets")


@dataclass
class Dataset:
    """Train and test splits held as tensors.

    ``x_*`` is uint8 ``(N, C, H, W)`` for images (normalised by the harness with ``mean``/``std``) or float32
    ``(N, d)`` for vector data (used as is). ``y_*`` is int64 ``(N,)`` with the *true* training labels: noise is
    applied later by :mod:`nlbench.noise`, never by a loader.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: ``asymNN`` map: true class -> the class it is flipped to (classes absent from the map stay clean).
    asym_map: dict[int, int] | None = None
    #: Real human label sets (CIFAR-N) by noise name, aligned with ``y_train``; loaded lazily.
    human_labels: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    #: Free-form facts for the record (source path, caveats such as "JPEG copy").
    info: dict[str, str] = field(default_factory=dict)
    #: Whether ``y_train`` holds the true labels (False: only the observed, already noisy labels are known, as
    #: for Clothing1M; then no synthetic noise is added, no oracle runs and no weight telemetry is recorded,
    #: because all three need the truth).
    true_labels: bool = True
    #: Trusted samples the dataset itself provides for the clean meta set (Clothing1M: its human-verified clean
    #: training list). When set, the meta set is drawn from them, class-balanced, instead of being carved from
    #: the training split, whose labels may be noisy.
    x_meta: torch.Tensor | None = None
    y_meta: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise DataError(f"{self.name}: images and labels differ in length")
        if (self.x_meta is None) != (self.y_meta is None) or (
                self.x_meta is not None and len(self.x_meta) != len(self.y_meta)):
            raise DataError(f"{self.name}: the meta samples need images and labels of the same length")


def balanced_subsample(y: np.ndarray, n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a class-balanced subsample of ``n`` labels: ``n // C`` per class, the remainder one
    each to classes drawn with ``rng``; raises :class:`DataError` if a class has too few samples."""
    per = np.full(num_classes, n // num_classes)
    per[rng.choice(num_classes, n % num_classes, replace=False)] += 1
    keep = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        if len(members) < per[c]:
            raise DataError(f"class {c} has {len(members)} samples, fewer than the {per[c]} a balanced subsample "
                            f"of {n} needs")
        keep.append(rng.choice(members, per[c], replace=False))
    return np.sort(np.concatenate(keep))


def resolve_root(data_root: str | os.PathLike | None) -> Path | None:
    """The explicit ``--data-root``, else ``$NLBENCH_DATA_ROOT``, else ``None``.

    An explicit root that does not exist is an error: it is never silently replaced by another location.
    """
    if data_root is None:
        env = os.environ.get("NLBENCH_DATA_ROOT")
        if not env:
            return None
        data_root = env
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {str(root)!r} does not exist or is not a directory")
    return root
