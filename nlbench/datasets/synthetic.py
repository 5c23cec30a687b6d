"""A seeded Gaussian mixture for tests and the theory experiments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.errors import NLBenchError


def gaussian_mixture(n: int, d: int, num_classes: int, rng: np.random.Generator, *, separation: float = 3.0,
                     centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` points in ``d`` dims, balanced over ``num_classes`` unit-variance Gaussians.

    Class means are random directions scaled to norm ``separation``. Returns (x float32 (n, d), y int64 (n,),
    centers (C, d)); pass ``centers`` to draw a second split from the same mixture.
    """
    if centers is None:
        centers = rng.standard_normal((num_classes, d))
        centers *= separation / np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.arange(n) % num_classes
    rng.shuffle(y)
    x = centers[y] + rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.int64), centers


@register_dataset("synthetic")
def synthetic(root: Path | None = None, download: bool = False, *, n_train: int = 2000, n_test: int = 500,
              dim: int = 16, num_classes: int = 4, separation: float = 3.0, seed: int = 0) -> Dataset:
    """Gaussian mixture: ``num_classes`` classes in ``dim`` dims; the data seed is ``seed`` (fixed by default so
    that runs with different training seeds see the same data)."""
    for key, value in (("n_train", n_train), ("n_test", n_test), ("dim", dim), ("num_classes", num_classes),
                       ("seed", seed), ("separation", separation)):
        kind = (int, float) if key == "separation" else int  # --data-opt values arrive as parsed JSON
        if not isinstance(value, kind) or isinstance(value, bool):
            raise NLBenchError(f"synthetic option {key} must be {'a number' if key == 'separation' else 'an integer'}"
                               f", got {value!r}")
    if min(n_train, n_test, dim, num_classes - 1) < 1:
        raise NLBenchError("synthetic needs n_train, n_test, dim >= 1 and num_classes >= 2")
    rng = np.random.default_rng([seed, 0x5E7])
    x, y, centers = gaussian_mixture(n_train, dim, num_classes, rng, separation=separation)
    xt, yt, _ = gaussian_mixture(n_test, dim, num_classes, rng, centers=centers)
    return Dataset(
        name="synthetic",
        x_train=torch.from_numpy(x), y_train=torch.from_numpy(y),
        x_test=torch.from_numpy(xt), y_test=torch.from_numpy(yt),
        classes=[f"class{i}" for i in range(num_classes)],
        info={"generator": f"gaussian_mixture(n={n_train}, d={dim}, C={num_classes}, sep={separation}, seed={seed})"},
    )
