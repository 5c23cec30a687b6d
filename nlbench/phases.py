"""The three-phase reweighting dynamics of meta-learning with noisy labels, reproduced in the paper's theory
setting and detected from the trajectories (``docs/methods.md``, "Three-phase study"; arXiv 2510.12209).

Setting (what the theory analyses, and nothing more):

- a binary task with labels ``y`` in ``{-1, +1}``: ``synthetic`` (a two-component Gaussian mixture drawn with
  :func:`nlbench.datasets.synthetic.gaussian_mixture`) or ``fashion-mnist-binary`` (:mod:`nlbench.datasets.binary`);
  a noisy pool of ``n`` samples whose labels are flipped with exact per-class counts
  (:func:`nlbench.noise.flip_with_matrix` with ``T = [[1-r, r], [r, 1-r]]``) and a clean, class-balanced
  meta subset ``V`` of ``m`` samples drawn apart from the pool;
- a wide two-layer ReLU network in the NTK parameterisation, ``f(x) = a . relu(W x / sqrt(d)) / sqrt(h)``, both
  layers trained, with the *antisymmetric* initialisation (neurons come in pairs with equal ``W`` rows and opposite
  ``a``), so that ``f = 0`` at initialisation and the first residuals are exactly the labels, as in the analysis;
- squared loss ``l_i = (f(x_i) - y_i)^2 / 2``, meta loss ``L_V = mean_V l``, full-batch gradient descent on the
  weighted loss ``L(theta; w) = sum_i w_i l_i / n``;
- persistent per-sample weights ``w_i`` in ``[0, 1]`` (start ``w0``), updated every iteration before the step:
  ``w <- clip(w + alpha * g / s, 0, 1)``, then ``theta <- theta - eta grad L(theta; w)``.

Scores ``g`` (``method``):

- ``meta-reweight``: the exact meta-gradient of the current weighted step, ``g_i = -dL_V(theta_hat(w))/dw_i =
  (eta / n) grad L_V(theta_hat)^T grad l_i(theta)`` with ``theta_hat = theta - eta grad L(theta; w)`` (full batch,
  so ``theta_hat`` is the next iterate at the current weights). :func:`meta_scores_squared` computes it without
  second-order autograd (one ``torch.func.grad`` for ``u = grad L_V(theta_hat)`` and one ``torch.func.jvp`` of the
  per-example losses along ``u``), the route of :mod:`nlbench.methods.meta_grad`, whose functions are tied to
  cross-entropy; :func:`reference_scores` is the double-backward ground truth.
- ``surrogate``: :func:`nlbench.methods.surrogate.surrogate_scores` of the hidden-layer features
  ``relu(W x / sqrt(d))`` of the pool (noisy labels) against the meta subset (clean labels), ``C = 2``.

Scale ``s`` (nlbench defines it): the mean ``|g|`` of the *first* iteration, then fixed. ``alpha`` is thus the
average weight change of the first iteration, and the scores keep their natural decay: the theory's third phase
is about the meta signal fading as ``L_V`` vanishes, which a per-iteration normalisation (what the
``meta-reweight`` method does inside the harness, where scales vary across models) would hide.

What it shows (``results/phases``; ``benchmarks/phases_sensitivity.py``): with ``meta-reweight`` all three phases
appear (defaults: alignment to iteration 5, filtering to 24, then post-filtering, where the noisy mean weight
rises from 0.021 at iteration 64 to 0.090 and the clean one falls from 0.95 to 0.84 while the scores fade to
a quarter of their peak and below); the drift shrinks as ``m`` grows (noisy rise 0.09 at ``m = 20-50``, 0.02 at
``m >= 1000``). The surrogate's scores do not contain the residuals, so they never fade: it aligns and filters
the same way but shows no post-filtering drift.

:func:`run_phases` returns the per-iteration log, :func:`detect_phases` the phase boundaries (rule in its
docstring), :func:`plot_phases` the figure and :func:`write_phases` ``phases.json``, ``phases.png`` and
``log.csv`` in one folder (what ``nlbench phases`` runs).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import grad, jvp, vjp

from nlbench.benchmark.splits import class_balanced_quota
from nlbench.benchmark.stats import auroc
from nlbench.errors import NLBenchError
from nlbench.methods.surrogate import surrogate_scores
from nlbench.noise import flip_with_matrix
from nlbench.phase_config import PHASE_DATASETS, PHASE_METHODS, PhaseConfig

__all__ = ["PHASE_DATASETS", "PHASE_METHODS", "PhaseConfig", "PhaseTask", "detect_phases", "init_mlp",
           "make_task", "meta_scores_squared", "mlp_features", "mlp_forward", "phases_experiment", "plot_phases",
           "reference_scores", "run_phases", "squared_losses", "surrogate_phase_scores", "write_phases"]

Params = dict[str, torch.Tensor]


@dataclass
class PhaseTask:
    """The data of one run, float32 on the CPU; every label is in ``{-1, +1}``.

    ``x`` ``(n, d)`` with true labels ``y_true`` and noisy labels ``y_noisy`` (the only ones a method sees),
    ``x_meta`` ``(m, d)`` with clean ``y_meta``, and a test split ``x_test``, ``y_test``.
    """

    x: torch.Tensor
    y_true: torch.Tensor
    y_noisy: torch.Tensor
    x_meta: torch.Tensor
    y_meta: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def noisy(self) -> np.ndarray:
        """Boolean mask ``(n,)`` of the pool samples whose label was flipped."""
        return (self.y_true != self.y_noisy).numpy()


def _signed(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(np.asarray(y) == 1, 1.0, -1.0).astype(np.float32))


def _balanced_meta(y: np.ndarray, candidates: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    quota = class_balanced_quota(m, 2, rng)
    parts = []
    for c in (0, 1):
        have = candidates[y[candidates] == c]
        if len(have) < quota[c]:
            raise NLBenchError(f"phases: meta size {m} needs {quota[c]} clean samples of class {c}; only "
                               f"{len(have)} are left after the pool")
        parts.append(rng.choice(have, size=quota[c], replace=False))
    return np.sort(np.concatenate(parts))


def make_task(cfg: PhaseConfig, data_root: str | Path | None = None) -> PhaseTask:
    """Draw the pool, flip its labels, and draw the clean meta subset, all from ``cfg.seed``.

    The pool does not depend on ``meta_size`` (the meta subset is drawn from a separate stream, or from the
    images left over after the pool), so a sweep over ``m`` compares the same noisy pool.
    """
    cfg.validate()
    n, m = cfg.n_train, cfg.meta_size
    if cfg.dataset == "synthetic":
        from nlbench.datasets.synthetic import gaussian_mixture

        streams = [np.random.default_rng([cfg.seed, 0x9A5E, k]) for k in range(3)]
        # Means at +-c: separation is the distance between them.
        c = streams[0].standard_normal(cfg.dim)
        centers = np.stack([c, -c]) * (cfg.separation / 2 / np.linalg.norm(c))
        x, y, _ = gaussian_mixture(n, cfg.dim, 2, streams[0], centers=centers)
        xm, ym, _ = gaussian_mixture(m, cfg.dim, 2, streams[1], centers=centers)
        xt, yt, _ = gaussian_mixture(1000, cfg.dim, 2, streams[2], centers=centers)
    else:
        from nlbench.datasets import load_dataset

        # Twice m beyond the pool leaves about m per class to draw the balanced meta subset from.
        ds = load_dataset("fashion-mnist-binary", data_root, n_train=min(n + 2 * m, 12000))
        xa, ya = ds.x_train.numpy(), ds.y_train.numpy()
        if len(ya) <= n:
            raise NLBenchError(f"phases: fashion-mnist-binary has {len(ya)} training images, too few for a pool of "
                               f"{n} and a meta subset")
        idx = _balanced_meta(ya, np.arange(n, len(ya)), m, np.random.default_rng([cfg.seed, 0x9A5E, 1]))
        x, y, xm, ym = xa[:n], ya[:n], xa[idx], ya[idx]
        xt, yt = ds.x_test.numpy(), ds.y_test.numpy()
    r = cfg.noise_rate
    noisy = flip_with_matrix(y, np.array([[1 - r, r], [r, 1 - r]]), np.random.default_rng([cfg.seed, 0x9A5E, 3]))
    return PhaseTask(torch.as_tensor(x, dtype=torch.float32), _signed(y), _signed(noisy),
                     torch.as_tensor(xm, dtype=torch.float32), _signed(ym),
                     torch.as_tensor(xt, dtype=torch.float32), _signed(yt))


def init_mlp(dim: int, width: int, generator: torch.Generator) -> Params:
    """Antisymmetric NTK initialisation: ``W`` ``(h, d)`` and ``a`` ``(h,)`` standard normal, with rows
    ``h/2..h`` copying rows ``0..h/2`` of ``W`` and negating ``a``, so ``f = 0`` at initialisation."""
    half = width // 2
    w = torch.randn(half, dim, generator=generator)
    a = torch.randn(half, generator=generator)
    return {"W": torch.cat([w, w]), "a": torch.cat([a, -a])}


def mlp_features(params: Params, x: torch.Tensor) -> torch.Tensor:
    """Hidden-layer features ``relu(x W^T / sqrt(d))``, ``(N, h)``."""
    return torch.relu(x @ params["W"].T / math.sqrt(x.shape[1]))


def mlp_forward(params: Params, x: torch.Tensor) -> torch.Tensor:
    """``f(x) = relu(x W^T / sqrt(d)) a / sqrt(h)``, ``(N,)``."""
    return mlp_features(params, x) @ params["a"] / math.sqrt(params["a"].shape[0])


def squared_losses(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example squared losses ``(f(x) - y)^2 / 2``, ``(N,)``."""
    return 0.5 * (mlp_forward(params, x) - y) ** 2


def _step(params: Params, g: Params, eta: float) -> Params:
    return {k: params[k] - eta * g[k] for k in params}


def _forward_and_vjp(params: Params, x: torch.Tensor):
    """``f(x)``, the hidden features (detached) and the VJP of ``f`` w.r.t. the parameters, from ONE forward."""
    def fwd(p: Params) -> tuple[torch.Tensor, torch.Tensor]:
        feats = mlp_features(p, x)
        return feats @ p["a"] / math.sqrt(p["a"].shape[0]), feats.detach()

    f, vjp_fn, feats = vjp(fwd, params, has_aux=True)
    return f, feats, lambda v: vjp_fn(v)[0]


def _meta_pass(params: Params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, x_meta: torch.Tensor,
               y_meta: torch.Tensor, eta: float, f: torch.Tensor, vjp_fn) -> torch.Tensor:
    n = x.shape[0]
    # grad_theta sum_i c_i l_i = sum_i c_i (f_i - y_i) grad f_i: one VJP of f with the cotangent c * residual.
    g_train = vjp_fn(weights * (f - y) / n)
    u = grad(lambda p: squared_losses(p, x_meta, y_meta).mean())(_step(params, g_train, eta))
    _, dl = jvp(lambda p: squared_losses(p, x, y), (params,), (u,))
    return dl * (eta / n)


def meta_scores_squared(params: Params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                        x_meta: torch.Tensor, y_meta: torch.Tensor, eta: float) -> torch.Tensor:
    """Exact scores ``g_i = -dL_V(theta_hat(w))/dw_i = (eta / n) grad L_V(theta_hat)^T grad l_i(theta)``, ``(n,)``.

    ``theta_hat = theta - eta grad_theta sum_i w_i l_i(theta) / n`` with ``l`` the squared loss and ``L_V`` its mean
    over the meta samples ``(x_meta, y_meta)``; ``weights`` ``(n,)`` are constants. ``theta_hat`` needs one VJP,
    ``u = grad L_V(theta_hat)`` one reverse pass on the meta samples, and the ``n`` inner products
    ``grad l_i(theta)^T u`` one forward-mode pass (``torch.func.jvp`` of the loss vector along ``u``): no
    second-order autograd (``docs/methods.md``, "Exact meta-gradient").
    """
    f, _, vjp_fn = _forward_and_vjp(params, x)
    return _meta_pass(params, x, y, weights, x_meta, y_meta, eta, f, vjp_fn)


def reference_scores(params: Params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor,
                     x_meta: torch.Tensor, y_meta: torch.Tensor, eta: float) -> torch.Tensor:
    """The same scores as :func:`meta_scores_squared` by double backward through the virtual step (tests only)."""
    w = weights.detach().clone().requires_grad_(True)
    p = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    obj = (w * squared_losses(p, x, y)).sum() / x.shape[0]
    gs = torch.autograd.grad(obj, list(p.values()), create_graph=True)
    hat = {k: v - eta * g for (k, v), g in zip(p.items(), gs, strict=True)}
    (dw,) = torch.autograd.grad(squared_losses(hat, x_meta, y_meta).mean(), w)
    return -dw


def surrogate_phase_scores(params: Params, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor,
                           y_meta: torch.Tensor) -> torch.Tensor:
    """FBR scores (:func:`nlbench.methods.surrogate.surrogate_scores`, ``C = 2``) of the hidden-layer features of
    ``x`` (labels ``y`` in ``{-1, +1}``) against those of the meta samples, ``(n,)``."""
    with torch.no_grad():
        return surrogate_scores(mlp_features(params, x), (y > 0).long(), mlp_features(params, x_meta),
                                (y_meta > 0).long(), 2)


#: Columns of the per-iteration log, in ``log.csv`` order.
LOG_COLUMNS = ("iteration", "clean_weight", "noisy_weight", "meta_loss", "train_acc_true", "train_acc_noisy",
               "test_acc", "auroc", "signal", "noisy_below_0.1")


def _acc(f: torch.Tensor, y: torch.Tensor) -> float:
    return float(((f > 0) == (y > 0)).float().mean())


def run_phases(cfg: PhaseConfig, task: PhaseTask | None = None, *, data_root: str | Path | None = None,
               progress: Any = None) -> dict[str, np.ndarray]:
    """Run ``cfg.iterations`` full-batch steps with persistent clipped weights; return the log.

    The log maps each name of :data:`LOG_COLUMNS` to an array of ``iterations + 1`` rows: row ``t`` is the state
    *before* iteration ``t`` (row 0 is the initialisation, the last row the final state), i.e. the mean weight of
    the clean and of the noisy pool samples, the meta loss ``L_V(theta_t)``, the accuracy of ``sign f`` on the pool
    against the true and against the noisy labels and on the test split, the AUROC of the weights for telling
    clean (positive) from noisy samples, and ``signal`` = mean ``|g|`` of the scores computed at ``t`` (the last
    row repeats the previous one: no scores are computed after the last step). ``noisy_below_0.1`` is the share of
    noisy samples whose weight is below 0.1. ``progress(t)`` is called after each iteration if given.
    """
    cfg.validate()
    task = make_task(cfg, data_root) if task is None else task
    gen = torch.Generator().manual_seed(int(np.random.default_rng([cfg.seed, 0x9A5E, 4]).integers(2**62)))
    params = init_mlp(task.x.shape[1], cfg.width, gen)
    x, y, xm, ym = task.x, task.y_noisy, task.x_meta, task.y_meta
    noisy = torch.from_numpy(task.noisy)
    clean = ~noisy
    n = x.shape[0]
    w = torch.full((n,), cfg.w0)
    y_cls, ym_cls = (y > 0).long(), (ym > 0).long()
    rows: list[list[float]] = []
    scale = None
    signal = math.nan
    for t in range(cfg.iterations + 1):
        f, feats, vjp_fn = _forward_and_vjp(params, x)
        if t < cfg.iterations:
            if cfg.method == "meta-reweight":
                g = _meta_pass(params, x, y, w, xm, ym, cfg.lr, f, vjp_fn)
            else:
                g = surrogate_scores(feats, y_cls, mlp_features(params, xm), ym_cls, 2)
            signal = float(g.abs().mean())
        with torch.no_grad():
            f_meta, f_test = mlp_forward(params, xm), mlp_forward(params, task.x_test)
            rows.append([t, float(w[clean].mean()) if clean.any() else math.nan,
                         float(w[noisy].mean()) if noisy.any() else math.nan,
                         float(0.5 * ((f_meta - ym) ** 2).mean()), _acc(f, task.y_true), _acc(f, y),
                         _acc(f_test, task.y_test), auroc(w.numpy(), ~task.noisy), signal,
                         float((w[noisy] < 0.1).float().mean()) if noisy.any() else math.nan])
        if t == cfg.iterations:
            break
        if scale is None:
            scale = max(signal, torch.finfo(torch.float32).tiny)
        w = (w + cfg.alpha * g / scale).clamp(0.0, 1.0)
        params = _step(params, vjp_fn(w * (f - y) / n), cfg.lr)
        if progress is not None:
            progress(t)
    arr = np.asarray(rows, dtype=np.float64)
    out = {name: arr[:, j] for j, name in enumerate(LOG_COLUMNS)}
    out["iteration"] = out["iteration"].astype(np.int64)
    return out


def _first(mask: np.ndarray, start: int = 0) -> int | None:
    hits = np.flatnonzero(mask[start:])
    return int(hits[0]) + start if len(hits) else None


def detect_phases(log: dict[str, np.ndarray], *, filtered_eps: float = 0.05, settle: float = 0.1,
                  loss_fraction: float = 0.2, drift_tol: float = 0.02) -> dict[str, Any]:
    """Phase boundaries of one trajectory, from the mean noisy weight ``q_t``, the mean clean weight ``c_t`` and the
    clean-subset (meta) loss ``L_t`` of the log (:func:`run_phases`; rows are iterations ``0..T``).

    Rule (nlbench defines it; thresholds are the keyword arguments). With ``q_min = min_t q_t``, first reached at
    ``t_min``, and ``drop = q_0 - q_min``:

    - **alignment** ``[0, t_a)``: clean and noisy weights separate. It ends at ``t_a``, the first iteration where
      the noisy mean weight has covered half its total fall, ``q_t <= q_0 - drop / 2``.
    - **filtering** ``[t_a, t_p)``: the noisy weights are driven to their floor while the meta signal is strong.
      ``noisy_floor_reached`` is the first ``t >= t_a`` with ``q_t <= q_min + settle * drop`` (90 % of the fall
      done); the run *filtered* if ``q_min <= filtered_eps``.
    - **post-filtering** ``[t_p, T]``: the clean-subset loss, which carries the meta signal (the exact scores are
      proportional to the meta residuals), has contracted: ``t_p`` is the first iteration at or after
      ``noisy_floor_reached`` with ``L_t <= loss_fraction * L_0``. ``filtering_end = post_filtering_start = t_p``;
      both are ``None`` if the run never gets there (filtering then lasts to the end).

    Drift in post-filtering: ``noisy_rise = max_{t >= t_min} q_t - q_min`` (the rise of the noisy mean weight after
    its minimum; ``drifted`` when it exceeds ``drift_tol``) and ``clean_fall = max_t c_t - c_T``. Also reported:
    the AUROC of the weights (clean vs noisy) at the end of filtering, at its best and at the end, and the signal
    ``mean |g|`` at ``t_p`` relative to its peak. Boundaries are iteration numbers with
    ``0 <= t_a <= noisy_floor_reached <= t_p <= T``. A run whose noisy weights never fall (``drop <= 0``) has no
    phases: every boundary is ``None``.
    """
    q, c, loss = (np.asarray(log[k], dtype=np.float64) for k in ("noisy_weight", "clean_weight", "meta_loss"))
    au, sig = np.asarray(log["auroc"], dtype=np.float64), np.asarray(log["signal"], dtype=np.float64)
    last = len(q) - 1
    t_min = int(np.argmin(q))
    q_min = float(q[t_min])
    drop = float(q[0] - q_min)
    out: dict[str, Any] = {
        "rule": {"alignment_end": "first t with noisy_weight <= q0 - (q0 - qmin) / 2",
                 "noisy_floor_reached": f"first t >= alignment_end with noisy_weight <= qmin + {settle:g} (q0 - qmin)",
                 "post_filtering_start": f"first t >= noisy_floor_reached with meta_loss <= {loss_fraction:g} "
                                         "meta_loss[0]; filtering_end = post_filtering_start",
                 "filtered": f"qmin <= {filtered_eps:g}",
                 "drifted": f"max noisy_weight after its argmin - qmin > {drift_tol:g}"},
        "iterations": last, "noisy_weight_min": q_min, "noisy_weight_argmin": t_min,
        "noisy_weight_end": float(q[-1]), "clean_weight_end": float(c[-1]), "clean_weight_max": float(c.max()),
        "meta_loss_start": float(loss[0]), "meta_loss_end": float(loss[-1]), "meta_loss_min": float(loss.min()),
        "auroc_end": float(au[-1]), "auroc_max": float(np.nanmax(au)) if np.isfinite(au).any() else math.nan,
        "noisy_rise": float(q[t_min:].max() - q_min), "clean_fall": float(c.max() - c[-1]),
        "filtered": bool(q_min <= filtered_eps),
    }
    out["drifted"] = out["noisy_rise"] > drift_tol
    t_a = t_floor = t_p = None
    if drop > 0:
        t_a = _first(q <= q[0] - drop / 2)
        t_floor = _first(q <= q_min + settle * drop, t_a)
        t_p = _first(loss <= loss_fraction * loss[0], t_floor)
    out.update(alignment_end=t_a, noisy_floor_reached=t_floor, filtering_end=t_p, post_filtering_start=t_p,
               auroc_filtering_end=None if t_p is None else float(au[t_p]),
               signal_at_post_filtering=None if t_p is None else float(sig[t_p] / np.nanmax(sig)))
    out["phases"] = [] if t_a is None else [
        {"name": "alignment", "start": 0, "end": t_a},
        {"name": "filtering", "start": t_a, "end": last if t_p is None else t_p},
        *([] if t_p is None else [{"name": "post-filtering", "start": t_p, "end": last}]),
    ]
    return out


_PHASE_COLORS = {"alignment": "#4c72b0", "filtering": "#e5ae38", "post-filtering": "#8172b3"}


def plot_phases(log: dict[str, np.ndarray], phases: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Write a PNG: mean clean and noisy weight per iteration, the detected phases as shaded bands, and the
    clean-subset loss on a second, logarithmic axis. Uses matplotlib's Agg canvas (no pyplot state, headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    it = np.asarray(log["iteration"])
    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for ph in phases.get("phases", []):
        ax.axvspan(ph["start"], max(ph["end"], ph["start"] + 0.5), color=_PHASE_COLORS[ph["name"]], alpha=0.18,
                   lw=0, label=ph["name"])
    ax.plot(it, log["clean_weight"], color="#2a9d4b", lw=1.8, label="clean samples: mean weight")
    ax.plot(it, log["noisy_weight"], color="#b02a2a", lw=1.8, label="noisy samples: mean weight")
    # Alignment and filtering take tens of iterations, the post-filtering drift thousands: a symmetric-log axis
    # (linear below 1) shows both and keeps iteration 0.
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.3)
    ax.set_xlabel("iteration (log scale)")
    ax.set_ylabel("mean weight")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, it[-1])
    ax2 = ax.twinx()
    ax2.semilogy(it, np.maximum(np.asarray(log["meta_loss"]), 1e-12), color="0.35", lw=1.2, ls="--",
                 label="clean-subset loss (right)")
    ax2.set_ylabel("clean-subset loss (log)")
    for key, style in (("noisy_floor_reached", ":"), ("post_filtering_start", "-")):
        if phases.get(key) is not None:
            ax.axvline(phases[key], color="0.5", lw=0.8, ls=style)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if not math.isfinite(v) else round(float(v), 6)
    if isinstance(v, np.integer | np.bool_):
        return v.item()
    return v


def write_phases(out: str | Path, cfg: PhaseConfig, log: dict[str, np.ndarray], phases: dict[str, Any], *,
                 extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``phases.json`` (settings, detected phases, ``extra`` such as the wall time), ``phases.png`` and
    ``log.csv`` (one row per iteration, :data:`LOG_COLUMNS`) into the folder ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": asdict(cfg), "phases": phases, **(extra or {})}
    paths = {"json": out / "phases.json", "png": out / "phases.png", "csv": out / "log.csv"}
    paths["json"].write_text(json.dumps(_json_safe(record), indent=2) + "\n")
    title = (f"{cfg.method} on {cfg.dataset}: n={cfg.n_train}, m={cfg.meta_size}, flips {cfg.noise_rate:.0%}, "
             f"width {cfg.width}, seed {cfg.seed}")
    plot_phases(log, phases, paths["png"], title=title)
    with paths["csv"].open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(LOG_COLUMNS)
        for row in zip(*(log[k] for k in LOG_COLUMNS), strict=True):
            wr.writerow([int(row[0]), *(f"{v:.6g}" for v in row[1:])])
    return paths


def phases_experiment(cfg: PhaseConfig, out: str | Path, *, data_root: str | Path | None = None,
                      progress: Any = None) -> dict[str, Any]:
    """Run, detect and write (``nlbench phases``): :func:`run_phases`, :func:`detect_phases` and
    :func:`write_phases` into ``out``. Returns the detected phases with ``wall_s`` (seconds of the run)."""
    start = time.perf_counter()
    log = run_phases(cfg, data_root=data_root, progress=progress)
    wall = time.perf_counter() - start
    phases = detect_phases(log)
    write_phases(out, cfg, log, phases, extra={"wall_s": round(wall, 2), "torch_threads": torch.get_num_threads()})
    return {**phases, "wall_s": wall}
