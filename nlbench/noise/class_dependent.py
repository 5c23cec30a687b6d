"""Class-dependent noise from a fixed transition matrix: ``pairflip``, ``flipback``, ``background`` and ``asym``
(the dataset's class map)."""

from __future__ import annotations

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.noise.base import _matrix_noise, register_noise


def _pairflip(C, r, rng, ctx):
    """Pair flip (Han et al. 2018): T[i,i] = 1-r, T[i,(i+1) mod C] = r."""
    return (1 - r) * np.eye(C) + r * np.roll(np.eye(C), 1, axis=1)


def _flipback(C, r, rng, ctx):
    """nlbench's definition of the paper's undefined "flipback": paired swap 2k <-> 2k+1 at rate r; with odd C
    the last class stays clean."""
    T = np.eye(C)
    for a in range(0, C - 1, 2):
        T[a, a] = T[a + 1, a + 1] = 1 - r
        T[a, a + 1] = T[a + 1, a] = r
    return T


def _background(C, r, rng, ctx):
    """L2RW's background flip: one class b is drawn from the noise seed and every flipped label goes to b.
    Samples of class b itself cannot flip to b and stay clean, so the overall rate is r(C-1)/C for balanced
    classes."""
    b = int(rng.integers(C))
    T = (1 - r) * np.eye(C)
    T[:, b] += r
    T[b] = 0.0
    T[b, b] = 1.0
    return T


def _asym(C, r, rng, ctx):
    """Dataset-specific class map (``Dataset.asym_map``): a mapped class c keeps 1-r and sends r to map[c];
    classes outside the map stay clean. The map is applied once, from the true labels."""
    if not ctx.asym_map:
        raise NLBenchError(f"asym noise needs a class map, and dataset {ctx.dataset!r} defines none")
    T = np.eye(C)
    for src, dst in ctx.asym_map.items():
        T[src, src] = 1 - r
        T[src, dst] += r
    return T


for _kind, _fn in [("pairflip", _pairflip), ("flipback", _flipback), ("background", _background), ("asym", _asym)]:
    register_noise(_kind, family="class-dependent")(_matrix_noise(_fn))
