"""The settings of the three-phase study (``nlbench phases``), apart from its torch code so that the CLI can
take its defaults and help from them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from nlbench.errors import NLBenchError
from nlbench.options import Range, check_value

PHASE_METHODS = ("meta-reweight", "surrogate")
PHASE_DATASETS = ("synthetic", "fashion-mnist-binary")


@dataclass(frozen=True)
class PhaseConfig:
    """Settings of one three-phase run (all recorded in ``phases.json``).

    ``n_train`` is the noisy pool, ``meta_size`` the clean subset ``m``, ``noise_rate`` the share of flipped pool
    labels in each class, ``iterations`` the number of full-batch steps, ``width`` the hidden width ``h``
    (even: neurons come in antisymmetric pairs), ``lr`` the step size ``eta``, ``alpha`` and ``w0`` the weight
    update. ``dim`` and ``separation`` (distance between the two class means) shape ``synthetic`` only.
    ``seed`` drives everything random: data (synthetic), pool/meta split, flips and initialisation.

    Why these defaults: ``separation = 5`` (Bayes error 0.6 %) because the theory needs same-class samples to be
    similar under the kernel; at 3 (Bayes error 7 %) the borderline clean samples look noisy and the noisy weights
    never get near 0. ``alpha = 0.05`` moves the weights fast enough to finish filtering before the clean-subset
    loss contracts (at 0.01 the signal fades first and the weights freeze at about 0.07 and 0.8), ``lr = 1`` is a
    stable full-batch step in the NTK scaling, width 1024 is wide enough for the kernel regime yet keeps an
    iteration at about 20 ms on one CPU thread, and 1500 iterations show the post-filtering drift well past the
    noisy weights' minimum (around iteration 60).
    """

    dataset: str = "synthetic"
    method: str = "meta-reweight"
    n_train: int = 1000
    meta_size: int = 100
    noise_rate: float = 0.4
    iterations: int = 1500
    width: int = 1024
    lr: float = 1.0
    alpha: float = 0.05
    w0: float = 0.5
    seed: int = 0
    dim: int = 32
    separation: float = 5.0

    def validate(self) -> PhaseConfig:
        """Raise :class:`NLBenchError` for settings that cannot run; return ``self``."""
        if self.method not in PHASE_METHODS:
            raise NLBenchError(f"phases: method must be one of {', '.join(PHASE_METHODS)}, got {self.method!r}")
        if self.dataset not in PHASE_DATASETS:
            raise NLBenchError(f"phases: dataset must be one of {', '.join(PHASE_DATASETS)}, got {self.dataset!r}")
        if not 0.0 <= self.noise_rate < 0.5:
            raise NLBenchError(f"phases: noise rate must be in [0, 0.5) for a binary task (0.5 erases the labels), "
                               f"got {self.noise_rate}")
        if self.meta_size < 2:
            raise NLBenchError(f"phases: meta size must be at least 2 (one clean sample per class), got "
                               f"{self.meta_size}")
        if self.n_train < 4:
            raise NLBenchError(f"phases: n_train must be at least 4, got {self.n_train}")
        if self.iterations < 2:
            raise NLBenchError(f"phases: iterations must be at least 2, got {self.iterations}")
        if self.width < 2 or self.width % 2:
            raise NLBenchError(f"phases: width must be a positive even number, got {self.width}")
        if not (self.lr > 0 and self.alpha > 0 and 0.0 <= self.w0 <= 1.0):
            raise NLBenchError(f"phases: need lr > 0, alpha > 0 and 0 <= w0 <= 1, got lr={self.lr}, "
                               f"alpha={self.alpha}, w0={self.w0}")
        if self.dim < 1 or self.seed < 0:
            raise NLBenchError(f"phases: need dim >= 1 and seed >= 0, got dim={self.dim}, seed={self.seed}")
        for name, hint in PHASE_BOUNDS.items():  # finiteness and the resource ceilings
            check_value(f"phases: {name}", getattr(self, name), hint)
        if self.n_train * max(self.width, self.dim) > MAX_PHASE_ELEMENTS:
            raise NLBenchError(f"phases: n_train x max(width, dim) = {self.n_train * max(self.width, self.dim):,} "
                               f"exceeds {MAX_PHASE_ELEMENTS:,} elements (about 0.8 GB per matrix)")
        return self


#: The bounds of every numeric PhaseConfig field, checked after the messages above: sizes stay within what a
#: full-batch run on one machine can hold and finish (a 1e9-wide net or 1e12 iterations are refused, not tried).
PHASE_BOUNDS: dict[str, Any] = {
    "n_train": Annotated[int, Range(4, 200_000)], "meta_size": Annotated[int, Range(2, 200_000)],
    "iterations": Annotated[int, Range(2, 1_000_000)], "width": Annotated[int, Range(2, 65_536)],
    "lr": Annotated[float, Range(0, 100, low_open=True)], "alpha": Annotated[float, Range(0, 1e3, low_open=True)],
    "w0": Annotated[float, Range(0, 1)], "dim": Annotated[int, Range(1, 100_000)],
    "separation": Annotated[float, Range(0, 1e3, low_open=True)], "seed": Annotated[int, Range(0, 2**32 - 1)],
    "noise_rate": Annotated[float, Range(0, 0.5, high_open=True)],
}
#: Largest ``n_train x max(width, dim)`` (one float32 activation or input matrix of about 0.8 GB).
MAX_PHASE_ELEMENTS = 2 * 10**8
