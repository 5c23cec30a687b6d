"""Instance-dependent noise: ``idn`` (Xia et al. 2020), driven by the z-scored inputs."""

from __future__ import annotations

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.noise.base import _check_classes, register_noise, round_half_up


def standardise_features(x: np.ndarray) -> np.ndarray:
    """Flatten and z-score each input dimension over the dataset (constant dimensions become 0)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


@register_noise("idn", family="instance")
def idn(labels, num_classes, rate, rng, ctx):
    """Instance-dependent noise (Xia et al. 2020, "Part-dependent label noise"), with exact counts.

    As in Xia et al.: q_n ~ N(r, 0.1^2) truncated to [0, 1]; W ~ N(0, 1) of shape (C, d, C); p = x_n W[y_n],
    p[y_n] = -inf, p = q_n softmax(p), p[y_n] += 1 - q_n, where x_n are the z-scored, flattened inputs.
    Exact counts (nlbench): in class c exactly round(n_c r) samples flip, drawn without replacement with
    probability proportional to q_n; each goes to a class drawn from its own softmax(p). The returned T is the
    class average of the per-instance rows p (the nominal matrix).
    """
    _check_classes(num_classes)
    feats = ctx.features() if callable(ctx.features) else ctx.features
    if feats is None:
        raise NLBenchError("idn noise needs input features")
    labels = np.asarray(labels)
    x = np.asarray(feats, dtype=np.float32).reshape(len(labels), -1)
    C, d = num_classes, x.shape[1]
    q = np.empty(len(labels))
    todo = np.arange(len(labels))
    while len(todo):  # rejection sampling of the truncated normal, from the explicit generator
        draw = rng.normal(rate, 0.1, size=len(todo))
        ok = (draw >= 0) & (draw <= 1)
        q[todo[ok]] = draw[ok]
        todo = todo[~ok]
    W = rng.standard_normal((C, d, C)).astype(np.float32)
    noisy = labels.copy()
    T = np.zeros((C, C))
    for c in range(C):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            T[c, c] = 1.0
            continue
        logits = (x[idx] @ W[c]).astype(np.float64)
        logits[:, c] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        soft = np.exp(logits)
        soft /= soft.sum(axis=1, keepdims=True)
        P = q[idx, None] * soft
        P[:, c] += 1 - q[idx]
        T[c] = P.mean(axis=0)
        k = round_half_up(len(idx) * rate)
        if k == 0:
            continue
        # Gumbel top-k = sampling k without replacement with probability proportional to q.
        with np.errstate(divide="ignore"):
            keys = np.log(q[idx]) + rng.gumbel(size=len(idx))
        chosen = np.argsort(-keys, kind="stable")[:k]
        cum = soft[chosen].cumsum(axis=1)
        # Scaling u by the row total keeps u < cum[-1] when the float sum falls short of 1, and ``>=`` skips
        # zero-probability classes, so the draw can never land on the true class c (soft[:, c] = 0).
        u = rng.random(k)[:, None] * cum[:, -1:]
        targets = (u >= cum).sum(axis=1)
        noisy[idx[chosen]] = targets
    return noisy, T
