"""The feature-space view: a fixed sample of penultimate features, projected to 2-D, stored in the record.

With ``record_options = {"feature_epochs": [0, 1, 3], "feature_samples": 2000}`` (0 = before training) the
harness snapshots, after each listed epoch's evaluation, the features ``model.features(prep(x))`` of

* a fixed, class-stratified sample of the noisy pool, drawn once from the noise seed (its own stream), so every
  method and training seed of the same noise setting shows the *same* samples, and
* the clean meta set, on which a 2-D PCA is fitted at that epoch; the sample is projected onto it.

Snapshots run under ``torch.no_grad`` in eval mode: BatchNorm uses its running statistics and never updates
them, and no random stream is touched, so the option changes the record, never the training. The record gets::

    "features": {"sample_index": [...],   # positions in the pool
                 "noisy_label": [...], "true_label": [...], "is_noisy": [...], "classes": [...],
                 "epochs": {"0": [[x, y], ...], "1": ...}}   # coordinates rounded to 4 decimals

:func:`pca_2d` and :func:`feature_sample` are pure and usable on their own; :func:`plot_features` draws a record.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nlbench.benchmark.schema import features_problems
from nlbench.errors import NLBenchError
from nlbench.noise import noise_rng

#: Default size of the feature sample (2000 x 2 coordinates x a few epochs keeps a record small).
DEFAULT_SAMPLES = 2000
#: ``noise_rng`` stream of the sample (1-3 are the splits, the pool noise and the validation noise).
SAMPLE_STREAM = 7
DECIMALS = 4
_BATCH = 1000
#: Most panels :func:`plot_features` draws (evenly spaced epochs, first and last included, beyond that).
MAX_PANELS = 24
#: Most classes named in its legend.
MAX_LEGEND = 100


def pca_2d(meta_feats: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Project ``feats`` ``(n, d)`` onto the first two principal axes of ``meta_feats`` ``(m, d)``, ``m >= 2``.

    Both are centred on the mean of ``meta_feats``; the axes come from the SVD of the centred meta features, and
    each axis's sign is fixed so that its largest-magnitude loading is positive (the first such on ties), making
    the coordinates a deterministic function of the inputs. Returns ``(n, 2)`` float64; with fewer than two
    non-degenerate directions (``d == 1``, or ``m == 2``) the missing coordinate is 0.
    """
    meta = np.asarray(meta_feats, dtype=np.float64)
    x = np.asarray(feats, dtype=np.float64)
    if meta.ndim != 2 or x.ndim != 2 or meta.shape[1] != x.shape[1] or len(meta) < 2:
        raise ValueError(f"pca_2d needs (m >= 2, d) meta and (n, d) features, got {meta.shape} and {x.shape}")
    mean = meta.mean(0)
    _, s, vt = np.linalg.svd(meta - mean, full_matrices=False)
    axes = np.zeros((2, meta.shape[1]))
    k = min(2, len(s))
    # components with no variance are arbitrary directions: drop them rather than draw noise
    keep = s[:k] > s[0] * 1e-9 if s[0] > 0 else np.zeros(k, dtype=bool)
    axes[:k][keep] = vt[:k][keep]
    for a in axes:
        j = int(np.argmax(np.abs(a)))
        if a[j] < 0:
            a *= -1
    return (x - mean) @ axes.T


def feature_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a class-stratified sample of ``min(n, len(labels))`` from ``labels`` ``(N,)``.

    Classes get equal shares (water-filling: a class with fewer samples than its share gives all it has and the
    rest is split among the larger ones; leftovers of the integer division go to the largest classes), and the
    members of each class are drawn without replacement with ``rng``.
    """
    labels = np.asarray(labels)
    if n < 1:
        raise ValueError(f"feature sample size must be positive, got {n}")
    classes, counts = np.unique(labels, return_counts=True)
    remaining = min(n, len(labels))
    quota = np.zeros(len(classes), dtype=np.int64)
    order = np.argsort(counts, kind="stable")  # smallest classes first, so their shortfall moves on
    for i, c in enumerate(order):
        quota[c] = min(counts[c], remaining // (len(classes) - i))
        remaining -= quota[c]
    picked = [rng.choice(np.flatnonzero(labels == cls), size=q, replace=False)
              for cls, q in zip(classes, quota, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def feature_options(record_options: Mapping[str, Any], epochs: int) -> tuple[tuple[int, ...], int] | None:
    """``(sorted unique feature epochs, sample size)`` from a run's ``record_options``, or ``None`` when the view
    is off. Raises :class:`NLBenchError` for epochs outside ``0..epochs`` or a non-positive sample size."""
    if "feature_epochs" not in record_options:
        return None
    raw = record_options["feature_epochs"]
    raw = [raw] if isinstance(raw, int) else raw
    if not isinstance(raw, list | tuple) or not raw or not all(isinstance(e, int) and not isinstance(e, bool)
                                                               for e in raw):
        raise NLBenchError(f"feature_epochs must be a non-empty list of integers, got {raw!r}")
    bad = [e for e in raw if not 0 <= e <= epochs]
    if bad:
        raise NLBenchError(f"feature epoch(s) {bad} outside 0..{epochs} (0 = before training)")
    n = record_options.get("feature_samples", DEFAULT_SAMPLES)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise NLBenchError(f"feature_samples must be a positive integer, got {n!r}")
    return tuple(sorted(set(raw))), n


@torch.no_grad()
def _features(model: torch.nn.Module, x: torch.Tensor, prep: Callable, autocast: Callable) -> np.ndarray:
    out = []
    for i in range(0, len(x), _BATCH):
        with autocast():
            out.append(model.features(prep(x[i:i + _BATCH])).float().flatten(1).cpu())
    return torch.cat(out).numpy()


@dataclass
class FeatureView:
    """The fixed sample of one run and the snapshots taken so far (see the module docstring)."""

    epochs: tuple[int, ...]
    sample_index: np.ndarray
    noisy_label: np.ndarray
    true_label: np.ndarray
    classes: list[str]
    coords: dict[str, list[list[float]]] = field(default_factory=dict)

    @classmethod
    def create(cls, record_options: Mapping[str, Any], epochs: int, noise_seed: int, pool_noisy: np.ndarray,
               pool_true: np.ndarray, meta_size: int, classes: list[str]) -> FeatureView | None:
        """The view a run asked for (``None`` if it did not); the sample is drawn from ``noise_seed`` only."""
        opts = feature_options(record_options, epochs)
        if opts is None:
            return None
        if meta_size < 2:
            raise NLBenchError("the feature view fits its PCA on the meta set: it needs --meta-size of at least 2")
        idx = feature_sample(pool_true, opts[1], noise_rng(noise_seed, stream=SAMPLE_STREAM))
        return cls(opts[0], idx, np.asarray(pool_noisy)[idx], np.asarray(pool_true)[idx], list(classes))

    def snapshot(self, epoch: int, model: torch.nn.Module, pool_x: torch.Tensor, meta_x: torch.Tensor,
                 prep: Callable, autocast: Callable) -> None:
        """Project the sample at ``epoch`` if it is one of the view's epochs. Eval mode (BatchNorm running stats
        are used, never updated); the model's train/eval mode is restored afterwards."""
        if epoch not in self.epochs:
            return
        was_training = model.training
        model.eval()
        try:
            idx = torch.as_tensor(self.sample_index, device=pool_x.device)
            xy = pca_2d(_features(model, meta_x, prep, autocast), _features(model, pool_x[idx], prep, autocast))
        finally:
            model.train(was_training)
        self.coords[str(epoch)] = np.round(xy, DECIMALS).tolist()

    def block(self) -> dict[str, Any]:
        """The record's ``features`` block (epochs that were reached; a diverged run stops early)."""
        return {"sample_index": self.sample_index.tolist(), "noisy_label": self.noisy_label.tolist(),
                "true_label": self.true_label.tolist(), "is_noisy": (self.noisy_label != self.true_label).tolist(),
                "classes": self.classes, "epochs": self.coords}


def plot_features(record: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Draw a record's ``features`` block to a PNG at ``path``: one panel per stored epoch, clean samples as dots
    and noisy ones as crosses, all coloured by their *true* class. Raises :class:`NLBenchError` if the record
    has no (or an empty) or a malformed feature block (:func:`nlbench.benchmark.schema.features_problems`)."""
    from nlbench.benchmark.plots import _new_figure, _save, literal  # matplotlib only when drawing

    name = " ".join(str(record.get("run_name", "?"))[:100].split())
    block = record.get("features")
    if not isinstance(block, dict) or not block.get("epochs"):
        raise NLBenchError(f"record {name} has no feature view; rerun it with --feature-epochs (e.g. 0,1,3)")
    problems = features_problems(block)
    if problems:
        raise NLBenchError(f"record {name} has a malformed feature view: {problems[0]}")
    epochs = sorted(block["epochs"], key=int)
    if len(epochs) > MAX_PANELS:
        epochs = [epochs[i] for i in sorted(set(np.linspace(0, len(epochs) - 1, MAX_PANELS).round().astype(int)))]
    true = np.asarray(block["true_label"], dtype=np.int64)
    noisy = np.asarray(block["is_noisy"], dtype=bool)
    classes = block["classes"]
    acc = {h.get("epoch"): h.get("test_acc") for h in record.get("history") or [] if isinstance(h, dict)}
    fig = _new_figure(3.6 * len(epochs) + 1.6, 4.2)
    axes = fig.subplots(1, len(epochs), squeeze=False)[0]
    colours = [f"C{c % 10}" for c in true]
    for ax, e in zip(axes, epochs, strict=True):
        xy = np.asarray(block["epochs"][e], dtype=float).reshape(-1, 2)
        for mask, marker, size in ((~noisy, "o", 4), (noisy, "x", 12)):
            ax.scatter(xy[mask, 0], xy[mask, 1], c=[colours[i] for i in np.flatnonzero(mask)], marker=marker,
                       s=size, linewidths=0.6 if marker == "x" else 0, alpha=0.7)
        a = acc.get(int(e))
        title = "before training" if int(e) == 0 else f"epoch {e}"
        ax.set_title(title + (f" (test acc {100 * a:.1f}%)" if isinstance(a, int | float) else ""), fontsize=9)
        ax.set(xlabel="PC 1", ylabel="PC 2" if ax is axes[0] else None)
        ax.tick_params(labelsize=7)
    handles = [axes[0].scatter([], [], color=f"C{c % 10}", marker="o", s=15, label=literal(cls))
               for c, cls in enumerate(classes[:MAX_LEGEND])]
    handles += [axes[0].scatter([], [], color="black", marker="o", s=15, label="clean"),
                axes[0].scatter([], [], color="black", marker="x", s=20, label="noisy")]
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(literal(f"{record.get('method')} | {record.get('dataset')} {record.get('noise')} | seed "
                         f"{record.get('seed')}: penultimate features, PCA fitted on the clean meta set"), fontsize=10)
    fig.text(0.01, 0.01, f"{len(true)} pool samples ({int(noisy.sum())} noisy). Colour = TRUE class; noisy samples "
             "(x) are drawn where their features put them, in their true-class colour.", fontsize=7)
    fig.subplots_adjust(left=0.05, right=1 - 1.4 / (3.6 * len(epochs) + 1.6), top=0.85, bottom=0.17, wspace=0.25)
    return _save(fig, Path(path))
