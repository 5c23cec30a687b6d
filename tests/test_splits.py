"""Meta / validation / pool splits: class balance, disjointness, sizes, remainders and impossible sizes."""

from __future__ import annotations

import numpy as np
import pytest

from nlbench.benchmark.splits import class_balanced_quota, make_splits
from nlbench.errors import NLBenchError


def labels(sizes, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int64)


def test_meta_is_class_balanced_and_disjoint():
    y = labels([30, 50, 40, 60])
    s = make_splits(y, 4, meta_size=40, val_size=25, rng=np.random.default_rng(0))
    assert np.bincount(y[s.meta], minlength=4).tolist() == [10, 10, 10, 10]
    assert (len(s.meta), len(s.val), len(s.pool)) == (40, 25, 115)
    assert not set(s.meta) & set(s.pool) and not set(s.meta) & set(s.val) and not set(s.val) & set(s.pool)
    assert sorted(np.concatenate([s.meta, s.val, s.pool]).tolist()) == list(range(180))
    for part in (s.meta, s.val, s.pool):
        assert part.dtype == np.int64 and np.array_equal(part, np.sort(part))


def test_remainder_goes_one_each_to_random_classes():
    y = labels([20] * 4)
    per_seed = []
    for seed in range(6):
        s = make_splits(y, 4, meta_size=22, val_size=0, rng=np.random.default_rng(seed))
        counts = np.bincount(y[s.meta], minlength=4)
        assert sorted(counts.tolist()) == [5, 5, 6, 6]
        per_seed.append(tuple(np.flatnonzero(counts == 6)))
    assert len(set(per_seed)) > 1  # no class is systematically favoured


def test_quota():
    q = class_balanced_quota(23, 10, np.random.default_rng(0))
    assert q.sum() == 23 and sorted(q.tolist()) == [2] * 7 + [3] * 3
    assert class_balanced_quota(0, 3, np.random.default_rng(0)).tolist() == [0, 0, 0]
    assert class_balanced_quota(2, 5, np.random.default_rng(0)).sum() == 2


def test_zero_meta_and_val():
    y = labels([5, 7])
    s = make_splits(y, 2, meta_size=0, val_size=0, rng=np.random.default_rng(0))
    assert len(s.meta) == 0 and len(s.val) == 0 and s.pool.tolist() == list(range(12))


def test_same_rng_same_split():
    y = labels([30, 30, 30])
    a = make_splits(y, 3, 12, 10, np.random.default_rng(4))
    b = make_splits(y, 3, 12, 10, np.random.default_rng(4))
    c = make_splits(y, 3, 12, 10, np.random.default_rng(5))
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("meta", "val", "pool"))
    assert not np.array_equal(a.meta, c.meta)


def test_meta_too_large_for_a_class():
    y = labels([30, 8, 40])  # class 1 can give at most 7 and keep one for the pool
    make_splits(y, 3, meta_size=21, val_size=0, rng=np.random.default_rng(0))  # 7 each: fine
    with pytest.raises(NLBenchError, match=r"^meta size 24 needs 8 samples of class 1, which has only 8 training "
                                           r"samples \(at most 7 per class possible\)$"):
        make_splits(y, 3, meta_size=24, val_size=0, rng=np.random.default_rng(0))


def test_meta_needs_a_class_that_is_absent():
    y = labels([10, 0, 10])
    with pytest.raises(NLBenchError, match=r"needs 1 samples of class 1, which has only 0 training samples "
                                           r"\(at most 0 per class possible\)$"):
        make_splits(y, 3, meta_size=3, val_size=0, rng=np.random.default_rng(0))


def test_val_leaving_nothing_to_train_on():
    y = labels([10, 10])
    make_splits(y, 2, meta_size=4, val_size=15, rng=np.random.default_rng(0))  # one sample left: allowed
    with pytest.raises(NLBenchError, match=r"^val size 16 leaves no training samples \(16 after the meta set\)$"):
        make_splits(y, 2, meta_size=4, val_size=16, rng=np.random.default_rng(0))
