"""Carving the clean meta set and the noisy validation split out of the training split, before noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nlbench.errors import NLBenchError


@dataclass
class Splits:
    """Positions in the training split: ``meta`` (clean, class-balanced), ``val`` (noisy), ``pool`` (noisy)."""

    meta: np.ndarray
    val: np.ndarray
    pool: np.ndarray


def class_balanced_quota(meta_size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class meta counts summing to ``meta_size``: ``meta_size // C`` each, the remainder going one each to
    classes drawn at random (so no class is systematically favoured)."""
    quota = np.full(num_classes, meta_size // num_classes)
    quota[rng.choice(num_classes, size=meta_size % num_classes, replace=False)] += 1
    return quota


def make_splits(labels: np.ndarray, num_classes: int, meta_size: int, val_size: int,
                rng: np.random.Generator, *, keep_pool: bool = True) -> Splits:
    """Draw a class-balanced meta set of ``meta_size`` and a random validation split of ``val_size`` from the
    training labels; the rest is the pool. Raises if a class cannot give its share and keep one sample for the
    pool, or if nothing is left to train on. ``keep_pool=False`` draws only a meta set (a dataset's own trusted
    samples, see ``Dataset.x_meta``), which may use every sample of a class."""
    labels = np.asarray(labels)
    n = len(labels)
    counts = np.bincount(labels, minlength=num_classes)
    quota = class_balanced_quota(meta_size, num_classes, rng)
    spare = 1 if keep_pool else 0
    short = [c for c in range(num_classes) if quota[c] + spare > counts[c] and quota[c] > 0]
    if short:
        c = short[0]
        what = "training samples" if keep_pool else "trusted samples for the meta set"
        most = max(int(counts.min()) - spare, 0)
        raise NLBenchError(f"meta size {meta_size} needs {quota[c]} samples of class {c}, which has only "
                           f"{counts[c]} {what} (at most {most} per class possible)")
    meta = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=quota[c], replace=False)
                           for c in range(num_classes)]).astype(np.int64)
    rest = np.setdiff1d(np.arange(n), meta)
    if not keep_pool:
        return Splits(np.sort(meta), np.zeros(0, dtype=np.int64), rest.astype(np.int64))
    if val_size >= len(rest):
        raise NLBenchError(f"val size {val_size} leaves no training samples ({len(rest)} after the meta set)")
    val = np.sort(rng.choice(rest, size=val_size, replace=False)).astype(np.int64)
    pool = np.setdiff1d(rest, val).astype(np.int64)
    return Splits(np.sort(meta), val, pool)
