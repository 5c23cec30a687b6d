"""A seeded Gaussian mixture for tests and the theory experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.errors import NLBenchError
from nlbench.options import Range

#: Largest ``(n_train + n_test) * dim`` the synthetic loader builds.
MAX_VALUES = 2 * 10**8


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


@register_dataset("synthetic", default_model="mlp")
def synthetic(root: Path | None = None, download: bool = False, *,
              n_train: Annotated[int, Range(1, 10**6)] = 2000, n_test: Annotated[int, Range(1, 10**6)] = 500,
              dim: Annotated[int, Range(1, 10**5)] = 16, num_classes: Annotated[int, Range(2, 1000)] = 4,
              separation: Annotated[float, Range(0, 10**6)] = 3.0,
              seed: Annotated[int, Range(0, 2**63 - 1)] = 0) -> Dataset:
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
    if (n_train + n_test) * dim > MAX_VALUES:  # each option in range, together too big to hold
        raise NLBenchError(f"synthetic: (n_train + n_test) x dim = {(n_train + n_test) * dim:,} values, over the "
                           f"limit of {MAX_VALUES:,} ({MAX_VALUES * 4 / 2**30:.1f} GiB of float32)")
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
