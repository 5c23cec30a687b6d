"""Label-noise generators with exact, verifiable rates.

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


#: kind -> generator(labels, num_classes, rate, rng, ctx) -> (noisy, T)
NOISES: Registry = Registry("noise")
#: kinds that take no rate suffix (``clean``, real human label sets)
_RATELESS: set[str] = set()


def register_noise(kind: str, *, rateless: bool = False):
    """Register a generator ``fn(labels, num_classes, rate, rng, ctx) -> (noisy, T)`` under ``kind``."""

    def deco(fn):
        NOISES.add(kind, fn)
        if rateless:
            _RATELESS.add(kind)
        return fn

    return deco


def list_noises() -> list[str]:
    """Noise kinds; those with a rate are listed as ``kindNN``."""
    return [k if k in _RATELESS else f"{k}NN" for k in NOISES.list()]


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
    if spec in NOISES and spec in _RATELESS:
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
    if kind in _RATELESS:
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


@register_noise("clean", rateless=True)
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


for _kind, _fn in [("sym", _sym), ("uniform", _uniform), ("pairflip", _pairflip), ("flipback", _flipback),
                   ("background", _background), ("asym", _asym)]:
    register_noise(_kind)(_matrix_noise(_fn))


def standardise_features(x: np.ndarray) -> np.ndarray:
    """Flatten and z-score each input dimension over the dataset (constant dimensions become 0)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    std = x.std(axis=0)
    return ((x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)


@register_noise("idn")
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


def _human(name: str):
    def generate(labels, num_classes, rate, rng, ctx):
        if name not in ctx.human:
            raise NLBenchError(f"noise {name!r} needs the CIFAR-N human labels, which dataset {ctx.dataset!r} "
                               "does not have")
        full = np.asarray(ctx.human[name]())
        noisy = full if ctx.indices is None else full[ctx.indices]
        if len(noisy) != len(labels):
            raise NLBenchError(f"{name}: {len(noisy)} human labels for {len(labels)} samples")
        return noisy.astype(np.int64).copy(), realised_matrix(labels, noisy, num_classes)

    generate.__doc__ = f"Real human labels {name} (CIFAR-N, Wei et al. 2022); T is the realised matrix."
    return generate


for _name in ["cifar10n-aggre", "cifar10n-worst", "cifar10n-rand1", "cifar10n-rand2", "cifar10n-rand3",
              "cifar100n"]:
    register_noise(_name, rateless=True)(_human(_name))


def apply_noise(spec: str | NoiseSpec, labels: np.ndarray, num_classes: int, rng: np.random.Generator,
                ctx: NoiseContext | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the noise ``spec`` to ``labels``: returns ``(noisy int64 (n,), T float (C, C))``."""
    spec = parse_noise(spec) if isinstance(spec, str) else spec
    noisy, T = NOISES.get(spec.kind)(np.asarray(labels, dtype=np.int64), num_classes, spec.rate, rng,
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
