"""Weight telemetry: how well a reweighting method's weights separate clean from noisy samples."""

from __future__ import annotations

import numpy as np

from nlbench.benchmark.stats import auroc


def weight_telemetry(weights: np.ndarray, is_noisy: np.ndarray, low: float = 0.1) -> dict[str, float | int]:
    """Summarise per-sample weights (NaN = not seen this epoch) against the ground-truth noise mask.

    Returns the mean weight of clean and of noisy samples, the AUROC of the weights for telling clean
    (positive) from noisy, the share of noisy samples whose weight is below ``low`` and the number of samples
    seen. NaN where a group is empty.
    """
    w = np.asarray(weights, dtype=np.float64)
    noisy = np.asarray(is_noisy, dtype=bool)
    seen = ~np.isnan(w)
    w, noisy = w[seen], noisy[seen]
    clean_w, noisy_w = w[~noisy], w[noisy]
    nan = float("nan")
    return {
        "w_clean_mean": float(clean_w.mean()) if len(clean_w) else nan,
        "w_noisy_mean": float(noisy_w.mean()) if len(noisy_w) else nan,
        "w_auroc": float(auroc(w, ~noisy)),
        "w_noisy_below_0.1": float(np.mean(noisy_w < low)) if len(noisy_w) else nan,
        "w_seen": int(seen.sum()),
    }
