"""Noise generators: exact per-class flip counts, documented T structure, seeding and validation."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import noisy_pool
from nlbench.datasets import load_dataset
from nlbench.errors import NLBenchError, UnknownNameError
from nlbench.noise import (
    NOISES,
    NoiseContext,
    apply_noise,
    list_noises,
    noise_report,
    noise_rng,
    parse_noise,
    realised_matrix,
    round_half_up,
)

# Unequal class sizes, some with x.5 products at the tested rates (e.g. 5 * 10% = 0.5, 15 * 30% = 4.5).
SIZES = [37, 50, 15, 64, 5]
C = len(SIZES)
ASYM_MAP = {0: 1, 1: 0, 2: 3}
RATES = [10, 30, 45]


def unequal_labels(sizes=SIZES, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(sizes)), sizes)).astype(np.int64)


def features(n: int, d: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def ctx_for(labels: np.ndarray) -> NoiseContext:
    return NoiseContext(asym_map=dict(ASYM_MAP), features=features(len(labels)), dataset="test")


def half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def expected_class_rate(kind: str, c: int, r: Fraction, T: np.ndarray) -> Fraction:
    """The exact nominal wrong-label share of class c (rates as fractions, so x.5 products are exact)."""
    if kind == "uniform":
        return r * (C - 1) / C
    if kind == "flipback":
        return Fraction(0) if c == C - 1 else r  # C = 5 is odd: the last class stays clean
    if kind == "background":
        b = int(np.argmax(T.sum(axis=0) - np.diag(T)))
        return Fraction(0) if c == b else r
    if kind == "asym":
        return r if c in ASYM_MAP else Fraction(0)
    return r  # sym, pairflip, idn


@pytest.mark.parametrize("pct", RATES)
@pytest.mark.parametrize("kind", ["sym", "uniform", "pairflip", "flipback", "background", "asym", "idn"])
def test_exact_per_class_flip_counts(kind, pct):
    y = unequal_labels()
    noisy, T = apply_noise(f"{kind}{pct}", y, C, noise_rng(7), ctx_for(y))
    assert noisy.dtype == np.int64 and noisy.shape == y.shape and T.shape == (C, C)
    r = Fraction(pct, 100)
    got = [int(np.sum(noisy[y == c] != c)) for c in range(C)]
    want = [half_up(n * expected_class_rate(kind, c, r, T)) for c, n in enumerate(SIZES)]
    assert got == want
    assert np.all((noisy >= 0) & (noisy < C))
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(T >= 0)
    if kind != "idn":  # every flip lands where the nominal T allows it
        flipped = noisy != y
        assert np.all(T[y[flipped], noisy[flipped]] > 0)


def test_rateless_is_a_property_of_the_registered_kind():
    """One registry: whether a kind takes a rate is on its entry, and listing and parsing read it from there."""
    rateless = {k for k in NOISES.list() if NOISES.get(k).rateless}
    assert rateless == {"clean", "cifar10n-aggre", "cifar10n-worst", "cifar10n-rand1", "cifar10n-rand2",
                        "cifar10n-rand3", "cifar100n"}
    assert list_noises() == [k if k in rateless else f"{k}NN" for k in NOISES.list()]
    assert parse_noise("clean").rate == 0.0 and parse_noise("sym40").rate == 0.4
    with pytest.raises(NLBenchError, match="takes no rate"):
        parse_noise("clean40")
    with pytest.raises(NLBenchError, match="needs a rate"):
        parse_noise("sym")


def test_half_counts_round_up():
    """The float trap: 1 - (1 - 0.1) < 0.1, so 5 samples at 10% must still flip round(0.5) = 1, not 0."""
    y = np.repeat([0, 1], [5, 15]).astype(np.int64)
    for spec, want in [("sym10", [1, 2]), ("pairflip30", [2, 5]), ("sym50", [3, 8])]:
        noisy, _ = apply_noise(spec, y, 2, noise_rng(0))
        assert [int(np.sum(noisy[y == c] != c)) for c in range(2)] == want, spec
    assert [round_half_up(x) for x in (0.5, 1.5, 2.4999, 4.5, 0.49)] == [1, 2, 2, 5, 0]


def test_sym_matrix():
    _, T = apply_noise("sym40", unequal_labels(), C, noise_rng(0))
    want = np.full((C, C), 0.4 / (C - 1))
    np.fill_diagonal(want, 0.6)
    np.testing.assert_allclose(T, want, atol=1e-12)


def test_uniform_matrix():
    _, T = apply_noise("uniform40", unequal_labels(), C, noise_rng(0))
    want = np.full((C, C), 0.4 / C)
    np.fill_diagonal(want, 0.6 + 0.4 / C)
    np.testing.assert_allclose(T, want, atol=1e-12)


def test_pairflip_matrix_and_targets():
    y = unequal_labels()
    noisy, T = apply_noise("pairflip45", y, C, noise_rng(0))
    want = 0.55 * np.eye(C)
    for i in range(C):
        want[i, (i + 1) % C] = 0.45
    np.testing.assert_allclose(T, want, atol=1e-12)
    flipped = noisy != y
    assert np.array_equal(noisy[flipped], (y[flipped] + 1) % C)


@pytest.mark.parametrize("num_classes", [4, 5])
def test_flipback_pairs(num_classes):
    y = unequal_labels(SIZES[:num_classes])
    noisy, T = apply_noise("flipback30", y, num_classes, noise_rng(0))
    want = np.eye(num_classes)
    for a in range(0, num_classes - 1, 2):
        want[a:a + 2, a:a + 2] = [[0.7, 0.3], [0.3, 0.7]]
    np.testing.assert_allclose(T, want, atol=1e-12)
    flipped = noisy != y
    assert np.array_equal(noisy[flipped], y[flipped] ^ 1)  # 2k <-> 2k+1
    if num_classes % 2:
        assert np.array_equal(noisy[y == num_classes - 1], y[y == num_classes - 1])


def test_background_sends_every_flip_to_one_class():
    y = unequal_labels()
    noisy, T = apply_noise("background40", y, C, noise_rng(3))
    flipped = noisy != y
    targets = set(noisy[flipped].tolist())
    assert len(targets) == 1
    b = targets.pop()
    want = 0.6 * np.eye(C)
    want[:, b] += 0.4
    want[b] = np.eye(C)[b]
    np.testing.assert_allclose(T, want, atol=1e-12)
    # b comes from the noise seed: some seed picks another class
    others = {int(np.argmax(apply_noise("background40", y, C, noise_rng(s))[1].sum(0) - 0.6)) for s in range(8)}
    assert len(others) > 1


def test_asym_follows_the_map_from_true_labels():
    y = unequal_labels()
    noisy, T = apply_noise("asym40", y, C, noise_rng(0), NoiseContext(asym_map=dict(ASYM_MAP)))
    want = np.eye(C)
    for s, d in ASYM_MAP.items():
        want[s, s], want[s, d] = 0.6, 0.4
    np.testing.assert_allclose(T, want, atol=1e-12)
    flipped = noisy != y
    assert np.array_equal(noisy[flipped], np.array([ASYM_MAP[int(c)] for c in y[flipped]]))
    # 0 <-> 1 is a swap applied once: exactly round(0.4 n) of each class moves, nothing chains back
    assert int(np.sum(noisy[y == 0] == 1)) == round_half_up(0.4 * SIZES[0])


def test_idn_rate_exact_and_rows_stochastic():
    y = unequal_labels([120, 80, 100, 60, 140])
    noisy, T = apply_noise("idn30", y, C, noise_rng(0), NoiseContext(features=features(len(y))))
    report = noise_report(y, noisy, C, nominal=T)
    assert report["realised_rate"] == pytest.approx((36 + 24 + 30 + 18 + 42) / 500, abs=1e-15)
    assert report["per_class_rate"] == pytest.approx([0.3] * C, abs=1e-12)
    np.testing.assert_allclose(T.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(T) < 1) and np.all(T >= 0)
    # features may also come lazily, as the harness passes them
    lazy, _ = apply_noise("idn30", y, C, noise_rng(0), NoiseContext(features=lambda: features(len(y))))
    assert np.array_equal(lazy, noisy)


def test_idn_two_classes_flips_to_the_other():
    y = np.repeat([0, 1], [30, 21]).astype(np.int64)
    noisy, _ = apply_noise("idn50", y, 2, noise_rng(1), NoiseContext(features=features(len(y))))
    # exact counts, not a random stream: round_half_up(30 * 0.5) = 15 and round_half_up(21 * 0.5) = 11 flips, and
    # with two classes every flip goes to the other class
    assert int(np.sum(noisy[y == 0] == 1)) == 15 and int(np.sum(noisy[y == 1] == 0)) == 11


def test_idn_without_features_is_a_user_error():
    with pytest.raises(NLBenchError, match="idn noise needs input features"):
        apply_noise("idn20", unequal_labels(), C, noise_rng(0))


def test_clean_is_identity():
    y = unequal_labels()
    noisy, T = apply_noise("clean", y, C, noise_rng(0))
    assert np.array_equal(noisy, y) and np.array_equal(T, np.eye(C))


@pytest.mark.parametrize("spec", ["sym40", "pairflip30", "background20", "idn40", "uniform60"])
def test_same_noise_seed_same_noise_different_seed_different_noise(spec):
    y = unequal_labels()
    a, Ta = apply_noise(spec, y, C, noise_rng(11), ctx_for(y))
    b, Tb = apply_noise(spec, y, C, noise_rng(11), ctx_for(y))
    c, _ = apply_noise(spec, y, C, noise_rng(12), ctx_for(y))
    assert np.array_equal(a, b) and np.array_equal(Ta, Tb)
    assert not np.array_equal(a, c)


def test_noise_rng_streams_are_distinct():
    draws = [noise_rng(0, s).integers(1 << 30, size=4).tolist() for s in range(3)]
    assert draws[0] != draws[1] != draws[2] != draws[0]
    assert noise_rng(0).integers(1 << 30, size=4).tolist() != np.random.default_rng(0).integers(1 << 30,
                                                                                                size=4).tolist()


@pytest.fixture(scope="module")
def synth():
    return load_dataset("synthetic", n_train=200, n_test=20)


def pool_labels(synth, **cfg) -> np.ndarray:
    return noisy_pool(RunConfig(dataset="synthetic", noise="sym40", meta_size=20, **cfg), synth).pool_noisy


def test_training_seed_does_not_change_the_noise(synth):
    a = noisy_pool(RunConfig(dataset="synthetic", noise="sym40", meta_size=20, seed=0, noise_seed=5), synth)
    b = noisy_pool(RunConfig(dataset="synthetic", noise="sym40", meta_size=20, seed=1, noise_seed=5), synth)
    assert np.array_equal(a.splits.meta, b.splits.meta) and np.array_equal(a.splits.pool, b.splits.pool)
    assert np.array_equal(a.pool_noisy, b.pool_noisy)
    assert a.noise_report == b.noise_report
    assert not np.array_equal(a.pool_noisy, pool_labels(synth, seed=0, noise_seed=6))


def test_default_noise_seed_follows_the_training_seed(synth):
    assert RunConfig(dataset="synthetic", seed=3).effective_noise_seed == 3
    assert np.array_equal(pool_labels(synth, seed=3), pool_labels(synth, seed=0, noise_seed=3))
    assert not np.array_equal(pool_labels(synth, seed=3), pool_labels(synth, seed=4))


def test_pool_report_counts_only_the_pool(synth):
    p = noisy_pool(RunConfig(dataset="synthetic", noise="sym40", meta_size=20, val_size=40), synth)
    y = synth.y_train.numpy()
    assert p.noise_report["n"] == 140 and p.noise_report["spec"] == "sym40"
    assert p.noise_report["realised_rate"] == float(np.mean(p.pool_noisy != y[p.splits.pool]))
    per_class = np.bincount(y[p.splits.pool], minlength=4)
    assert sum(per_class) == 140 and len(p.splits.meta) == 20 and len(p.splits.val) == 40
    assert p.noise_report["realised_rate"] == sum(round_half_up(0.4 * n) for n in per_class) / 140
    assert p.val_noise_report == {"realised_rate": float(np.mean(p.val_noisy != y[p.splits.val]))}


@pytest.mark.parametrize("spec,msg", [
    ("sym-5", r"noise rate -5% in 'sym-5' is outside \[0, 100\)"),
    ("pairflip-0.5", r"noise rate -0.5% in 'pairflip-0.5' is outside \[0, 100\)"),
    ("sym100", r"noise rate 100% in 'sym100' is outside \[0, 100\)"),
    ("uniform150", r"noise rate 150% in 'uniform150' is outside \[0, 100\)"),
    ("sym", r"noise 'sym' needs a rate in percent, e.g. sym40"),
    ("clean20", r"noise 'clean' takes no rate"),
])
def test_rate_validation(spec, msg):
    with pytest.raises(NLBenchError, match=f"^{msg}$"):
        parse_noise(spec)


def test_parse_noise_values():
    assert parse_noise(" SYM40 ") == parse_noise("sym40")
    assert parse_noise("pairflip12.5").rate == 0.125 and parse_noise("pairflip12.5").kind == "pairflip"
    assert parse_noise("clean").rate == 0.0
    assert parse_noise("cifar10n-worst").kind == "cifar10n-worst"


def test_sym_above_c_minus_1_over_c():
    y = np.repeat(np.arange(4), 10).astype(np.int64)
    noisy, _ = apply_noise("sym75", y, 4, noise_rng(0))  # exactly (C-1)/C is allowed: uniform labels
    assert int(np.sum(noisy != y)) == 32  # round_half_up(7.5) = 8 per class
    with pytest.raises(NLBenchError, match=r"^sym rate 76% exceeds \(C-1\)/C = 75.0% for 4 classes$"):
        apply_noise("sym76", y, 4, noise_rng(0))
    with pytest.raises(NLBenchError, match="exceeds"):
        apply_noise("sym60", np.repeat([0, 1], 5), 2, noise_rng(0))


def test_asym_without_a_map():
    with pytest.raises(NLBenchError, match=r"^asym noise needs a class map, and dataset 'synthetic' defines none$"):
        apply_noise("asym40", unequal_labels(), C, noise_rng(0), NoiseContext(dataset="synthetic"))


@pytest.mark.parametrize("spec,close", [("symm40", "sym"), ("pairflp30", "pairflip"), ("uniformm20", "uniform"),
                                        ("sym40x", "sym")])
def test_unknown_kind_suggests_a_close_match(spec, close):
    with pytest.raises(UnknownNameError, match=f"Did you mean '{close}'\\?") as e:
        parse_noise(spec)
    assert "Valid: asym, background" in str(e.value)
    assert isinstance(e.value, NLBenchError)


def test_one_class_is_rejected():
    with pytest.raises(NLBenchError, match="at least 2 classes"):
        apply_noise("sym20", np.zeros(4, dtype=np.int64), 1, noise_rng(0))


def test_noise_report_keys_and_values():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    noisy = np.array([0, 1, 0, 2, 1, 1, 2, 2, 0, 0])
    T = np.eye(3)
    rep = noise_report(y, noisy, 3, nominal=T)
    assert set(rep) == {"n", "realised_rate", "per_class_rate", "transition_matrix", "nominal_transition_matrix"}
    assert rep["n"] == 10 and rep["realised_rate"] == 0.4
    assert rep["per_class_rate"] == [0.5, 0.0, 0.5]
    assert rep["transition_matrix"] == [[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    assert rep["nominal_transition_matrix"] == T.tolist()
    # an empty class gets an identity row, so T stays row-stochastic
    assert realised_matrix(np.array([0, 0]), np.array([1, 0]), 3).tolist() == [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]]
    assert "nominal_transition_matrix" not in noise_report(y, noisy, 3)
