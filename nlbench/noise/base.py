"""The noise registry and what every kind shares: spec parsing, exact-count flipping, the noise report.

Label-noise generators with exact, verifiable rates (the kinds are in the sibling modules).

Every generator is a pure function of (true labels, rate, an explicit ``numpy.random.Generator``, a context)
that returns ``(noisy_labels, T)``. ``T`` is row-stochastic with ``T[true, noisy] = P(noisy = j | true = i)``
(the convention of docs/methods.md; cleanlab uses the transpose).

Exact counts: in every true class ``c`` with ``n_c`` samples, exactly ``round_half_up(n_c * (1 - T[c, c]))``
samples, chosen uniformly at random, get a *wrong* label drawn from the off-diagonal part of row ``c`` of ``T``,
renormalised. So the realised per-class rate equals the nominal one up to rounding, whatever the seed, and no
floor silently drops noise when classes are many (cleanlab#977). Each spec is a name plus a rate in percent
(``sym40``); the noise seed is separate from the training seed (see :func:`noise_rng`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from nlbench.errors import NLBenchError
from nlbench.registry import Registry


@dataclass
class NoiseContext:
    """What some generators need beyond the labels.

    ``features`` rows align with the labels (``idn``); ``asym_map`` is the dataset's map (``asym``); ``human``
    holds lazy loaders of real label sets aligned with the *whole* training split, and ``indices`` says which
    positions of it the labels are (CIFAR-N).
    """

    asym_map: dict[int, int] | None = None
    features: np.ndarray | Callable[[], np.ndarray] | None = None
    human: dict[str, Callable[[], np.ndarray]] = field(default_factory=dict)
    indices: np.ndarray | None = None
    dataset: str = "?"


@dataclass(frozen=True)
class NoiseSpec:
    """A parsed noise name: ``kind`` (a registered generator) and ``rate`` in [0, 1)."""

    name: str
    kind: str
    rate: float


@dataclass(frozen=True)
class NoiseKind:
    """A registered noise kind: its generator ``generate(labels, num_classes, rate, rng, ctx) -> (noisy, T)`` and
    whether its spec takes no rate suffix (``rateless``: ``clean``, real human label sets)."""

    generate: Callable[[np.ndarray, int, float, np.random.Generator, NoiseContext], tuple[np.ndarray, np.ndarray]]
    rateless: bool = False
    #: one of :data:`NOISE_FAMILIES`: what the papers' official configurations key their settings on (ELR's and
    #: DivideMix's "sym" and "asym" configs), so a method's per-family defaults apply the same way to every kind
    family: str = "symmetric"


#: The noise families a kind belongs to: ``clean``; ``symmetric`` (a flip goes to any other class alike);
#: ``class-dependent`` (a flip's target depends on the true class: the papers' "asymmetric" noise);
#: ``instance`` (the flip depends on the input); ``human`` (real annotators' labels).
NOISE_FAMILIES = ("clean", "symmetric", "class-dependent", "instance", "human")


#: kind -> :class:`NoiseKind` (the generator and whether the kind takes a rate)
NOISES: Registry[NoiseKind] = Registry("noise")


def register_noise(kind: str, *, rateless: bool = False, family: str = "symmetric"):
    """Register a generator ``fn(labels, num_classes, rate, rng, ctx) -> (noisy, T)`` under ``kind``; a
    ``rateless`` kind is named without a rate (``clean``), every other one with a rate in percent (``sym40``).
    ``family`` is one of :data:`NOISE_FAMILIES`."""
    if family not in NOISE_FAMILIES:
        raise ValueError(f"noise family must be one of {', '.join(NOISE_FAMILIES)}, got {family!r}")

    def deco(fn):
        NOISES.add(kind, NoiseKind(fn, rateless, family))
        return fn

    return deco


def is_rateless(kind: str) -> bool:
    """Whether ``kind`` is the canonical name of a registered kind that takes no rate."""
    return kind in NOISES.list() and NOISES.get(kind).rateless


def noise_family(spec: str) -> str:
    """The family (:data:`NOISE_FAMILIES`) of a noise spec such as ``pairflip45``."""
    return NOISES.get(parse_noise(spec).kind).family


def list_noises() -> list[str]:
    """Noise kinds; those with a rate are listed as ``kindNN``."""
    return [k if NOISES.get(k).rateless else f"{k}NN" for k in NOISES.list()]


# The optional minus lets "sym-5" reach the range check ("outside [0, 100)") instead of failing as an
# unknown kind "sym-".
# re.ASCII: ``\d`` is 0-9 only (non-ASCII digits are refused before matching anyway).
_SPEC = re.compile(r"^([a-z][a-z-]*?)(-?)(\d+)(?:\.(\d+))?$", re.ASCII)


#: longest noise spec accepted (the longest built-in is 14 characters)
MAX_SPEC_CHARS = 40
#: most decimals of a rate in percent (0.01% steps): a finer rate would flip the same labels under another name
MAX_RATE_DECIMALS = 2


def _show(spec: str) -> str:
    """``repr(spec)`` for an error line, cut at 40 characters."""
    text = repr(spec)
    return text if len(text) <= 40 else text[:37] + "..."


def _canonical_rate(whole: str, frac: str | None) -> str:
    """The rate as written in a canonical name: no leading zeros, no trailing fractional zeros (``040`` and
    ``40.0`` -> ``40``, ``12.50`` -> ``12.5``), so one experiment has one name and one config hash."""
    frac = (frac or "").rstrip("0")
    return (whole.lstrip("0") or "0") + (f".{frac}" if frac else "")


def parse_noise(spec: str) -> NoiseSpec:
    """``"pairflip40"`` -> ``NoiseSpec("pairflip40", "pairflip", 0.4)``; raises with a close match if unknown.

    The name is canonical: the kind lower-cased and resolved from aliases, the rate without leading zeros or
    trailing fractional zeros (``SYM040`` and ``sym40.0`` are ``sym40``). Only ASCII is accepted, so a rate in
    other digits (``sym٤٠``) is refused rather than given a second name.
    """
    if not isinstance(spec, str):
        raise NLBenchError(f"a noise spec must be a string such as sym40, got {spec!r}")
    if not spec.isascii():
        raise NLBenchError(f"noise spec {_show(spec)} must be ASCII letters, digits and '-' (e.g. sym40)")
    if len(spec.strip()) > MAX_SPEC_CHARS:  # a run name (and file name) holds the spec
        raise NLBenchError(f"noise spec {_show(spec)} is too long (at most {MAX_SPEC_CHARS} characters)")
    spec = spec.strip().lower()
    if is_rateless(spec):
        return NoiseSpec(spec, spec, 0.0)
    m = _SPEC.match(spec)
    if not m:
        if spec in NOISES:
            raise NLBenchError(f"noise {spec!r} needs a rate in percent, e.g. {spec}40")
        kind = spec.rstrip("-.0123456789")
        NOISES.canonical(kind)  # raises UnknownNameError with the valid list and a close match
        raise NLBenchError(f"noise rate in {spec!r} must be a number in percent, e.g. {kind}40")
    kind, sign, whole, frac = m.groups()
    if len((frac or "").rstrip("0")) > MAX_RATE_DECIMALS:  # sym12.345 and sym12.3451 would flip the same labels
        raise NLBenchError(f"noise rate in {spec!r} has more than {MAX_RATE_DECIMALS} decimals; rates are in "
                           f"percent with at most {MAX_RATE_DECIMALS} (e.g. sym12.5)")
    rate = _canonical_rate(whole, frac)
    rate = f"-{rate}" if sign and rate != "0" else rate  # a negative rate only reaches the range check below
    pct = float(rate)
    kind = NOISES.canonical(kind)
    if NOISES.get(kind).rateless:
        raise NLBenchError(f"noise {kind!r} takes no rate")
    if not 0 <= pct < 100:
        raise NLBenchError(f"noise rate {pct:g}% in {spec!r} is outside [0, 100)")
    return NoiseSpec(f"{kind}{rate}", kind, pct / 100.0)


def noise_rng(noise_seed: int, stream: int = 0) -> np.random.Generator:
    """The generator for noise seed ``noise_seed``; a distinct entropy tag keeps it independent of training RNGs
    seeded with the same integer."""
    return np.random.default_rng([int(noise_seed), 0x0015E, int(stream)])


def round_half_up(x: float) -> int:
    """``x`` rounded to the nearest integer, halves up. The slack absorbs float error in products such as
    ``n * (1 - T[c, c])`` (``1 - (1 - 0.1) = 0.0999..``): without it ``5 * sym10`` flips 0 samples, not 1.
    Genuine values sit at least ``1 / (100 C)`` from a half for percent rates, far above the slack."""
    return int(math.floor(x + 0.5 + 1e-7))


def flip_with_matrix(labels: np.ndarray, T: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip exactly ``round_half_up(n_c * (1 - T[c, c]))`` labels of each class ``c`` to classes drawn from the
    renormalised off-diagonal of row ``c``. ``labels`` is not modified."""
    labels = np.asarray(labels)
    noisy = labels.copy()
    C = T.shape[0]
    for c in range(C):
        idx = np.flatnonzero(labels == c)
        k = round_half_up(len(idx) * (1.0 - T[c, c]))
        if k == 0:
            continue
        off = T[c].copy()
        off[c] = 0.0
        off /= off.sum()
        chosen = rng.choice(idx, size=k, replace=False)
        noisy[chosen] = rng.choice(C, size=k, p=off)
    return noisy


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise NLBenchError("label noise needs at least 2 classes")


def _matrix_noise(build: Callable[[int, float, np.random.Generator, NoiseContext], np.ndarray]):
    """Turn a T-builder into a generator that flips with exact counts."""

    def generate(labels, num_classes, rate, rng, ctx):
        _check_classes(num_classes)
        T = build(num_classes, rate, rng, ctx)
        return flip_with_matrix(labels, T, rng), T

    generate.__doc__ = build.__doc__
    generate.__name__ = build.__name__
    return generate


def apply_noise(spec: str | NoiseSpec, labels: np.ndarray, num_classes: int, rng: np.random.Generator,
                ctx: NoiseContext | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the noise ``spec`` to ``labels``: returns ``(noisy int64 (n,), T float (C, C))``."""
    spec = parse_noise(spec) if isinstance(spec, str) else spec
    noisy, T = NOISES.get(spec.kind).generate(np.asarray(labels, dtype=np.int64), num_classes, spec.rate, rng,
                                              ctx or NoiseContext())
    return np.asarray(noisy, dtype=np.int64), np.asarray(T, dtype=np.float64)


def realised_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical row-stochastic ``T[i, j]`` = share of class-i samples labelled j (identity row if class empty)."""
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (np.asarray(true), np.asarray(noisy)), 1)
    n = counts.sum(axis=1, keepdims=True)
    return np.where(n > 0, counts / np.maximum(n, 1), np.eye(num_classes))


def nominal_rate(report: dict) -> float:
    """The nominal share of wrong labels, ``1 - mean diag(T)`` of the nominal matrix (the realised one for
    human noise), assuming balanced classes: 0.5 for ``sym50``, 0.28 for Fashion-MNIST ``asym40``."""
    T = np.asarray(report.get("nominal_transition_matrix") or report["transition_matrix"], dtype=float)
    return float(1 - np.mean(np.diag(T)))


def noise_report(true: np.ndarray, noisy: np.ndarray, num_classes: int,
                 nominal: np.ndarray | None = None) -> dict:
    """What the benchmark records about realised noise: ``transition_matrix`` (realised, T[true, noisy]),
    ``realised_rate`` (share of labels that differ), ``per_class_rate`` and, if given, the nominal matrix."""
    true, noisy = np.asarray(true), np.asarray(noisy)
    T = realised_matrix(true, noisy, num_classes)
    report = {
        "n": int(len(true)),
        "realised_rate": float(np.mean(true != noisy)) if len(true) else 0.0,
        "per_class_rate": [float(1 - T[c, c]) for c in range(num_classes)],
        "transition_matrix": T.round(6).tolist(),
    }
    if nominal is not None:
        report["nominal_transition_matrix"] = np.asarray(nominal).round(6).tolist()
    return report
