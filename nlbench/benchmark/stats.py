"""Statistics for aggregating benchmark results honestly across seeds and settings.

Every function here is pure: no global state, no random numbers, inputs are never modified. Only numpy,
scipy and pandas are used.

Conventions shared by all functions:

* "Seeds" are aligned by position: ``a[i]`` and ``b[i]`` are the results of two methods on the same seed.
  A missing run is written as ``NaN``; it is dropped (for paired functions, the whole pair is dropped).
* Scores are "higher is better" unless a function takes ``higher_is_better``.
* When there is not enough data for a quantity to be defined, the function returns ``nan`` for it
  rather than raising; invalid *arguments* (wrong shapes, ``confidence`` outside (0, 1), ...) raise
  ``ValueError``.
* Returned numbers are plain Python ``float``/``int`` (or numpy arrays / pandas objects where stated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


def _st():
    """scipy.stats, imported on first use: `nlbench noise show` and a run's telemetry (auroc) need neither it nor
    pandas, and importing both costs about a second of start-up."""
    from scipy import stats

    return stats


def _pd():
    import pandas

    return pandas

__all__ = [
    "auroc",
    "average_ranks",
    "friedman",
    "holm",
    "nemenyi_cd",
    "nemenyi_q_alpha",
    "paired_test",
    "t_interval",
    "tied_with_best",
]

# Differences whose spread is below this many ulps of the largest |input| are treated as exactly constant.
_ROUNDING_ULPS = 64


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _check_prob(x: float, name: str) -> None:
    if not (0.0 < float(x) < 1.0):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {x!r}")


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, int, float, float]:
    """Mean and two-sided Student-t confidence interval of the mean.

    Args:
        values: 1-d array-like of per-seed results. ``NaN`` entries (missing runs) are dropped.
        confidence: coverage of the interval, strictly between 0 and 1.

    Returns:
        ``(mean, std, n, lo, hi)`` where ``n`` is the number of non-NaN values, ``std`` is the *sample*
        standard deviation (``ddof=1``) and ``[lo, hi]`` is
        ``mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n)``.

        * ``n == 0``: everything except ``n`` is ``nan``.
        * ``n == 1``: ``mean`` is the single value; ``std``, ``lo`` and ``hi`` are ``nan``
          (one seed gives no estimate of spread).
        * ``std == 0`` (all values equal, ``n >= 2``): the interval degenerates to ``(mean, mean)``.
    """
    _check_prob(confidence, "confidence")
    x = _as_1d(values, "values")
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return math.nan, math.nan, 0, math.nan, math.nan
    mean = float(np.mean(x))
    if n == 1:
        return mean, math.nan, 1, math.nan, math.nan
    std = float(np.std(x, ddof=1))
    half = float(_st().t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return mean, std, n, mean - half, mean + half


def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, _pd().Series) and isinstance(b, _pd().Series):
        a, b = a.align(b, join="inner")
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must have the same length (one entry per seed), got {x.size} and {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def paired_test(a, b) -> tuple[float, float, int]:
    """Two-sided paired t-test of ``a`` against ``b`` over their shared seeds.

    Args:
        a, b: 1-d array-likes of equal length, entry ``i`` being the result on seed ``i``. A seed where
            either value is ``NaN`` is not shared and is dropped. If both are ``pandas.Series`` they are
            first aligned on their index (inner join), so the index can be the seed.

    Returns:
        ``(statistic, p_value, n)`` from ``scipy.stats.ttest_rel(a, b)`` (statistic > 0 means ``a`` is
        larger on average), ``n`` being the number of shared seeds. Degenerate cases, decided here rather
        than left to scipy (which returns ``nan`` or ``inf``/``p=0``):

        * ``n < 2``: ``(nan, nan, n)``, no test is possible.
        * every difference is 0: ``(0.0, 1.0, n)``; identical results are no evidence of a difference.
        * the differences are all equal but non-zero (zero variance): ``(nan, nan, n)``; the t statistic
          is undefined (infinite), so no p-value is reported.

        "Equal" / "zero" is judged up to floating-point rounding of the inputs (64 ulps of the largest
        absolute value), so e.g. ``[0.3, 0.7] - [0.2, 0.6]`` counts as a constant difference.
    """
    x, y = _paired_arrays(a, b)
    n = int(x.size)
    if n < 2:
        return math.nan, math.nan, n
    d = x - y
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))), np.finfo(float).tiny)
    tol = _ROUNDING_ULPS * np.finfo(float).eps * scale
    if float(np.max(np.abs(d))) <= tol:
        return 0.0, 1.0, n
    if float(np.ptp(d)) <= tol:
        return math.nan, math.nan, n
    res = _st().ttest_rel(x, y)
    return float(res.statistic), float(res.pvalue), n


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (family-wise error control).

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted values are
    ``min(1, max_{j <= i} (m - j + 1) * p_(j))``: monotone in the raw p-values and capped at 1. Rejecting
    every hypothesis whose adjusted p-value is ``< alpha`` is Holm's procedure at level ``alpha``.

    Args:
        p_values: array-like of p-values in [0, 1], any shape. ``NaN`` marks "no test" and is excluded
            from the family (it does not count towards ``m``).

    Returns:
        float array of the same shape and order as the input; ``NaN`` entries stay ``NaN``.
    """
    p = np.asarray(p_values, dtype=float)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    if np.any((flat[ok] < 0.0) | (flat[ok] > 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full(flat.shape, np.nan)
    idx = np.flatnonzero(ok)
    m = idx.size
    if m:
        order = idx[np.argsort(flat[idx], kind="stable")]
        scaled = (m - np.arange(m)) * flat[order]
        out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return out.reshape(p.shape)


def _complete_rows(scores: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(scores, _pd().DataFrame):
        raise TypeError("scores must be a pandas.DataFrame (rows = settings, columns = methods)")
    return scores.astype(float).dropna(axis=0, how="any")


def average_ranks(scores: pd.DataFrame) -> pd.Series:
    """Average rank of each method over settings (Demšar 2006).

    Args:
        scores: ``DataFrame`` with one row per setting (dataset x noise, ...) and one column per method;
            higher score is better. Only rows with no ``NaN`` are used, so every method is ranked on the
            same settings.

    Returns:
        ``Series`` indexed by the columns (same order), named ``"average_rank"``: within each row the best
        method gets rank 1, ties get the average of the ranks they span (``scipy.stats.rankdata``,
        ``method="average"``), then ranks are averaged over rows. All ``NaN`` if no row is complete.
    """
    full = _complete_rows(scores)
    if len(full) == 0:
        mean = np.full(scores.shape[1], np.nan)
    else:
        mean = _st().rankdata(-full.to_numpy(), method="average", axis=1).mean(axis=0)
    return _pd().Series(mean, index=scores.columns, name="average_rank")


def friedman(scores: pd.DataFrame) -> tuple[float, float, int, int]:
    """Friedman test that all methods perform equally, over the settings where every method has a score.

    Args:
        scores: ``DataFrame``, rows = settings, columns = methods (direction does not matter). Rows with
            any ``NaN`` are dropped.

    Returns:
        ``(statistic, p_value, n_settings, k_methods)`` from ``scipy.stats.friedmanchisquare`` (chi-square
        statistic with tie correction), ``n_settings`` being the number of complete rows.

        * ``k_methods < 3`` or ``n_settings < 2``: statistic and p-value are ``nan``.
        * every complete row is an all-way tie: ``(0.0, 1.0, ...)`` (scipy would divide 0 by 0); as in
          :func:`paired_test`, identical results are no evidence of a difference.
    """
    full = _complete_rows(scores)
    n, k = int(full.shape[0]), int(full.shape[1])
    if k < 3 or n < 2:
        return math.nan, math.nan, n, k
    arr = full.to_numpy()
    if np.all(arr == arr[:, :1]):
        return 0.0, 1.0, n, k
    res = _st().friedmanchisquare(*arr.T)
    return float(res.statistic), float(res.pvalue), n, k


def nemenyi_q_alpha(k: int, alpha: float = 0.05) -> float:
    """Critical value ``q_alpha`` of the Nemenyi test for ``k`` methods (Demšar 2006, Table 5a).

    ``q_alpha = studentized_range.ppf(1 - alpha, k, df=inf) / sqrt(2)``; e.g. 2.728 for ``k=5`` and 3.164
    for ``k=10`` at ``alpha=0.05``.
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    _check_prob(alpha, "alpha")
    try:
        q = float(_st().studentized_range.ppf(1.0 - alpha, int(k), np.inf))
    except (ValueError, OverflowError):
        q = math.nan
    if not math.isfinite(q):  # older scipy versions do not accept df=inf
        q = float(_st().studentized_range.ppf(1.0 - alpha, int(k), 1e6))
    return q / math.sqrt(2.0)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks (Demšar 2006): ``q_alpha * sqrt(k(k+1) / (6N))``.

    Two methods whose average ranks (:func:`average_ranks`) over ``n`` settings differ by at least this
    amount are significantly different at level ``alpha`` (all-pairs comparison).

    Args:
        k: number of methods (>= 2).
        n: number of settings, i.e. complete rows used for the ranks (>= 1).
        alpha: significance level, strictly between 0 and 1.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    return nemenyi_q_alpha(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def auroc(scores, positives) -> float:
    """Area under the ROC curve, via the Mann-Whitney U statistic.

    ``AUROC = U / (n_pos * n_neg)`` with ``U = sum(ranks of positives) - n_pos (n_pos + 1) / 2`` and ranks
    taken over all scores with ties averaged: the probability that a random positive scores higher than a
    random negative, counting ties as 1/2. 1.0 = perfect ranking, 0.5 = chance.

    Args:
        scores: 1-d array-like of scores; the positive class should get *higher* scores. Entries with a
            ``NaN`` score are dropped.
        positives: boolean mask of the same length (``True`` = positive). Must have boolean dtype so that
            an index array or 0/1 floats are not silently misread.

    Returns:
        AUROC as a float; ``nan`` if either class is empty (after dropping NaN scores).
    """
    s = _as_1d(scores, "scores")
    pos = np.asarray(positives)
    if pos.dtype != np.bool_:
        raise TypeError(f"positives must be a boolean mask, got dtype {pos.dtype}")
    if pos.shape != s.shape:
        raise ValueError(f"positives must have the same shape as scores, got {pos.shape} and {s.shape}")
    keep = ~np.isnan(s)
    s, pos = s[keep], pos[keep]
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _st().rankdata(s, method="average")
    u = float(ranks[pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def tied_with_best(
    scores_by_method: Mapping[str, Sequence[float] | np.ndarray | pd.Series],
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> set[str]:
    """Methods statistically indistinguishable from the best one (for bolding a leaderboard cell).

    The best method is the one with the highest (or lowest, if ``higher_is_better=False``) mean over its
    own non-NaN seeds; exact ties in the mean go to the method listed first. Every other method is compared
    to it with :func:`paired_test` over the seeds both have, the p-values are Holm-corrected (:func:`holm`)
    over the family of comparisons that produced a p-value, and a method is *tied* when its adjusted
    p-value is ``>= alpha`` (not significant).

    Decisions for degenerate comparisons:

    * fewer than 2 shared seeds with the best: **not** tied (there is no evidence either way, and bolding
      needs evidence); not part of the Holm family.
    * identical results on every shared seed (``p = 1``): tied, and part of the family.
    * a constant non-zero difference on every shared seed (``p = nan``, see :func:`paired_test`): **not**
      tied (it differs, in the same direction, on every seed); not part of the Holm family.
    * a method with no non-NaN value at all is never best and never tied.

    Args:
        scores_by_method: method name -> 1-d per-seed results, all of the same length and aligned by
            position (entry ``i`` is seed ``i``, ``NaN`` = missing run). If every value is a
            ``pandas.Series``, pairs are instead aligned on the index.
        higher_is_better: direction of the score.
        alpha: significance level, strictly between 0 and 1.

    Returns:
        Set of method names including the best one; empty if there is no method with data.
    """
    _check_prob(alpha, "alpha")
    all_series = all(isinstance(v, _pd().Series) for v in scores_by_method.values())
    data = {name: (v if all_series else _as_1d(v, str(name))) for name, v in scores_by_method.items()}
    if not all_series:
        lengths = {arr.size for arr in data.values()}
        if len(lengths) > 1:
            raise ValueError(f"all methods need one entry per seed (same length), got lengths {sorted(lengths)}")

    means = {}
    for name, v in data.items():
        arr = np.asarray(v, dtype=float)
        arr = arr[~np.isnan(arr)]
        if arr.size:
            means[name] = float(arr.mean())
    if not means:
        return set()
    sign = 1.0 if higher_is_better else -1.0
    best = max(means, key=lambda name: sign * means[name])  # max keeps the first of equal keys

    names, pvals = [], []
    for name in means:
        if name == best:
            continue
        _, p, n = paired_test(data[best], data[name])
        if n >= 2 and not math.isnan(p):
            names.append(name)
            pvals.append(p)
    adjusted = holm(pvals)
    return {best} | {name for name, p_adj in zip(names, adjusted, strict=True) if p_adj >= alpha}
