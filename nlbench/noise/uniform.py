"""Uniform noise: ``clean`` (no change), ``sym`` (exclusive symmetric) and ``uniform`` (inclusive symmetric)."""

from __future__ import annotations

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.noise.base import _matrix_noise, register_noise


@register_noise("clean", rateless=True, family="clean")
def clean(labels, num_classes, rate, rng, ctx):
    """Identity: no label changes."""
    return np.asarray(labels).copy(), np.eye(num_classes)


def _sym(C, r, rng, ctx):
    """Exclusive symmetric: T[i,i] = 1-r, T[i,j] = r/(C-1). Needs r <= (C-1)/C (above that the true label
    is no longer the most likely one)."""
    if r > (C - 1) / C + 1e-12:
        raise NLBenchError(f"sym rate {r:.0%} exceeds (C-1)/C = {(C - 1) / C:.1%} for {C} classes")
    return np.full((C, C), r / (C - 1)) + np.eye(C) * (1 - r - r / (C - 1))


def _uniform(C, r, rng, ctx):
    """Inclusive symmetric (MW-Net/DivideMix convention): a share r of labels is redrawn uniformly over all C
    classes, so the true wrong rate is r(C-1)/C; nlbench flips exactly that share to the other classes."""
    return np.full((C, C), r / C) + np.eye(C) * (1 - r)


register_noise("sym")(_matrix_noise(_sym))
register_noise("uniform")(_matrix_noise(_uniform))
