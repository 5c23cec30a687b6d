"""Plots regenerated from run records: accuracy per epoch, weight trajectories and critical-difference diagrams.

Headless by construction: figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas,
never pyplot, so nothing touches a display or matplotlib's global backend. File names are stable and shared
with the leaderboard's links (:func:`nlbench.benchmark.leaderboard.plot_file`), one set per protocol section:

* ``<slug>__<noise>__acc.png``: test accuracy against epoch, mean over seeds, one line per method;
* ``<slug>__<noise>__weights.png``: mean weight of clean (solid) and noisy (dashed) samples per epoch, for the
  methods that record weight telemetry (``w_clean_mean`` / ``w_noisy_mean`` in the history);
* ``<slug>__cd.png``: the Demšar (2006) critical-difference diagram of average ranks across noisy settings.

Records are untrusted input: a file name is made of record fields only through :func:`out_path`, which keeps it
one plain component that resolves inside the output folder, and record text is drawn literally (``$`` would
start matplotlib's math mode, see :func:`literal`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nlbench.benchmark.leaderboard import (
    ORACLE_TAG,
    _protocol_id,
    build_tables,
    method_label,
    noise_sort_key,
    plot_file,
    protocol_of,
)
from nlbench.errors import NLBenchError

# PNG metadata carries matplotlib's version by default; dropping it keeps the bytes stable across installs.
_SAVE = {"dpi": 120, "metadata": {"Software": None}}


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", **_SAVE)
    except OSError as e:
        raise NLBenchError(f"cannot write {path}: {e.strerror or e}") from None
    return path


_UNSAFE = re.compile(r"[^A-Za-z0-9_.+=-]")
_MAX_NAME = 200


def safe_file_name(name: str) -> str:
    """``name`` as one plain file-name component: characters other than letters, digits and ``_.+=-`` become
    ``_``, as does a leading dot (no hidden files, no ``..``), and a name over 200 characters is cut and given a
    hash of the whole. The identity for names built from valid records (:data:`nlbench.benchmark.schema.NAME`),
    so the leaderboard's links still match."""
    safe = _UNSAFE.sub("_", name)
    safe = "_" + safe[1:] if safe.startswith(".") else safe
    if len(safe) > _MAX_NAME:
        safe = f"{safe[:_MAX_NAME - 17]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return safe or "_"


def out_path(out_dir: str | os.PathLike, name: str) -> Path:
    """The path ``out_dir/<safe_file_name(name)>``, refused (:class:`NLBenchError`) unless it resolves to a file
    directly inside ``out_dir``: a symlink planted under that name cannot redirect the write elsewhere."""
    folder = Path(out_dir)
    path = folder / safe_file_name(name)
    if path.resolve().parent != folder.resolve():
        raise NLBenchError(f"refusing to write {path}: it resolves to {path.resolve()}, outside {folder}")
    return path


def literal(text: object) -> str:
    """Record text for a figure, drawn as written: matplotlib reads ``$...$`` as math (and fails on bad math)."""
    return str(text).replace("$", r"\$")


def _curves(records: Iterable[dict], keys: Sequence[str]) -> dict[tuple[str, str], dict[str, dict[str, np.ndarray]]]:
    """(section, noise) -> method label -> key -> per-epoch mean over seeds (NaN where no seed has a value)."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    oracle: dict[str, bool] = {}
    for rec in records:
        hist = [h for h in rec.get("history") or [] if isinstance(h, dict)]
        if not any(keys[0] in h for h in hist):
            continue
        label = method_label(rec)
        oracle[label] = oracle.get(label, False) or bool(rec.get("oracle"))
        cell = acc[(_protocol_id(protocol_of(rec)), rec["noise"])][label]
        for key in keys:
            cell[key].append([(h.get("epoch"), h.get(key)) for h in hist])
    out: dict = {}
    for setting, methods in acc.items():
        out[setting] = {}
        for label, series in methods.items():
            epochs = max(int(e) for runs in series.values() for run in runs for e, _ in run if e is not None)
            means = {}
            for key, runs in series.items():
                grid = np.full((len(runs), epochs), np.nan)
                for i, run in enumerate(runs):
                    for e, v in run:
                        if e is not None and isinstance(v, int | float):
                            grid[i, int(e) - 1] = float(v)
                with np.errstate(all="ignore"):
                    valid = ~np.isnan(grid)
                    means[key] = np.where(valid.any(0), np.nansum(grid, 0) / np.maximum(valid.sum(0), 1), np.nan)
            means["_oracle"] = oracle[label]
            out[setting][label] = means
    return out


def _label(name: str, is_oracle: bool) -> str:
    return literal(f"{name} {ORACLE_TAG}" if is_oracle else name)


def plot_accuracy(records: Sequence[dict], out_dir: str | os.PathLike, slugs: dict[str, str]) -> list[Path]:
    """One ``<slug>__<noise>__acc.png`` per setting: mean test accuracy (%) over seeds against epoch."""
    paths = []
    curves = _curves(records, ["test_acc"])
    for (sid, noise) in sorted(curves, key=lambda s: (slugs[s[0]], noise_sort_key(s[1]))):
        fig = _new_figure(6.4, 4.0)
        ax = fig.add_subplot()
        for label in sorted(curves[(sid, noise)]):
            c = curves[(sid, noise)][label]
            y = 100 * c["test_acc"]
            ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=3, linestyle="--" if c["_oracle"] else "-",
                    label=_label(label, c["_oracle"]))
        ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=literal(f"{slugs[sid]}: {noise} (mean over seeds)"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out_path(out_dir, plot_file(slugs[sid], noise, "acc"))))
    return paths


def plot_weights(records: Sequence[dict], out_dir: str | os.PathLike, slugs: dict[str, str]) -> list[Path]:
    """One ``<slug>__<noise>__weights.png`` per setting with weight telemetry: mean clean (solid) and noisy
    (dashed) sample weight per epoch, mean over seeds, one colour per reweighting method."""
    paths = []
    curves = _curves(records, ["w_clean_mean", "w_noisy_mean"])
    for (sid, noise) in sorted(curves, key=lambda s: (slugs[s[0]], noise_sort_key(s[1]))):
        fig = _new_figure(6.4, 4.0)
        ax = fig.add_subplot()
        for i, label in enumerate(sorted(curves[(sid, noise)])):
            c = curves[(sid, noise)][label]
            x = np.arange(1, len(c["w_clean_mean"]) + 1)
            colour = f"C{i % 10}"
            ax.plot(x, c["w_clean_mean"], color=colour, marker="o", markersize=3, label=literal(f"{label}: clean"))
            ax.plot(x, c["w_noisy_mean"], color=colour, marker="x", markersize=3, linestyle="--",
                    label=literal(f"{label}: noisy"))
        ax.set(xlabel="epoch", ylabel="mean sample weight",
               title=literal(f"{slugs[sid]}: {noise} weights (mean over seeds)"))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_path(out_dir, plot_file(slugs[sid], noise, "weights"))))
    return paths


def cd_cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Groups of methods not significantly different, for ranks sorted ascending: maximal index intervals
    ``(i, j)``, ``j > i``, with ``ranks[j] - ranks[i] < cd`` (Demšar's thick bars)."""
    out: list[tuple[int, int]] = []
    k = len(ranks)
    for i in range(k):
        j = i
        while j + 1 < k and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and not (out and out[-1][1] >= j):
            out.append((i, j))
    return out


def plot_cd(names: Sequence[str], ranks: Sequence[float], cd: float, path: str | os.PathLike,
            title: str = "") -> Path:
    """Demšar-style critical-difference diagram: methods on a rank axis (1 = best, on the left), the CD as a
    scale bar, and thick bars joining methods whose average ranks differ by less than ``cd``."""
    order = sorted(range(len(names)), key=lambda i: (ranks[i], names[i]))
    names = [names[i] for i in order]
    ranks = [float(ranks[i]) for i in order]
    k = len(names)
    half = (k + 1) // 2
    fig = _new_figure(8.0, 1.2 + 0.3 * half)
    # the axes span the middle half of the figure; names go in the margins, outside the axes
    ax = fig.add_axes((0.25, 0.05, 0.5, 0.8))
    ax.set_xlim(1, max(k, 2))
    low = -(half + 0.5)
    ax.set_ylim(low, 1.8)
    ax.axis("off")
    ax.hlines(0, 1, max(k, 2), color="black", linewidth=1)
    for r in range(1, max(k, 2) + 1):
        ax.vlines(r, 0, 0.15, color="black", linewidth=1)
        ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=8)
    if math.isfinite(cd):
        ax.hlines(1.3, 1, 1 + cd, color="black", linewidth=1.5)
        ax.vlines([1, 1 + cd], 1.2, 1.4, color="black", linewidth=1.5)
        ax.text(1 + cd / 2, 1.45, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    for i, (name, r) in enumerate(zip(names, ranks, strict=True)):
        left = i < half
        y = -(i + 1) if left else -(k - i)
        x_end = 1 - 0.02 * (k - 1) if left else max(k, 2) + 0.02 * (k - 1)
        ax.plot([r, r, x_end], [0, y, y], color="black", linewidth=0.8, clip_on=False)
        ax.text(x_end + (-0.01 if left else 0.01) * k, y, literal(f"{name} ({r:.2f})"), ha="right" if left else "left",
                va="center", fontsize=8, clip_on=False)
    if math.isfinite(cd):
        for level, (i, j) in enumerate(cd_cliques(ranks, cd)):
            y = -0.35 - 0.25 * level
            ax.hlines(y, ranks[i] - 0.03, ranks[j] + 0.03, color="black", linewidth=3)
    if title:
        ax.set_title(title, fontsize=9, pad=2)
    return _save(fig, Path(path))


def plot_all(records: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Every plot for ``records`` (valid records, see :func:`nlbench.benchmark.records.scan_records`) under
    ``out_dir``; returns the files written, in a fixed order."""
    records = list(records)
    tables = build_tables(records)
    slugs = dict(zip(tables.sections["section"], tables.sections["slug"], strict=True))
    paths = plot_accuracy(records, out_dir, slugs) + plot_weights(records, out_dir, slugs)
    for sec in tables.sections.itertuples(index=False):
        ranks = tables.ranks[tables.ranks["section"] == sec.section].sort_values("method")
        tests = tables.tests[tables.tests["section"] == sec.section]
        if len(ranks) < 2 or tests.empty or not ranks["avg_rank"].notna().all():
            continue
        cd = float(tests.iloc[0]["cd"])
        n = int(tests.iloc[0]["n_settings"])
        paths.append(plot_cd(list(ranks["method"]), list(ranks["avg_rank"]), cd,
                             out_path(out_dir, plot_file(sec.slug, None, "cd")),
                             title=literal(f"{sec.slug}: average ranks over {n} settings (Nemenyi, α = 0.05)")))
    return paths
