"""Plots regenerated from run records: accuracy per epoch, weight trajectories and critical-difference diagrams.

Headless by construction: figures are :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas,
never pyplot, so nothing touches a display or matplotlib's global backend. File names are stable and shared
with the leaderboard's links (:func:`nlbench.benchmark.leaderboard.plot_file`), one set per protocol section:

* ``<slug>__<noise>__acc.png``: test accuracy against epoch, one line (mean over seeds) and one min–max band
  over seeds per method (a method of several stages, ``forward`` and ``glc``, over its last stage, epochs counted
  within it, as the leaderboard judges it);
* ``<slug>__<noise>__weights.png``: mean weight of clean (solid) and noisy (dashed) samples per epoch, one panel
  per method that records weight telemetry (``w_clean_mean`` / ``w_noisy_mean`` in the history);
* ``<slug>__cd.png``: the Demšar (2006) critical-difference diagram of average ranks across noisy settings.

Records are untrusted input: a file name is made of record fields only through :func:`out_path`, which keeps it
one plain component that resolves inside the output folder, and record text is drawn literally (``$`` would
start matplotlib's math mode, see :func:`literal`).

Every method has one :class:`Style` (colour, line style, marker) in all the figures drawn together
(:func:`style_table`); oracles are dashed. Titles name the protocol for people (:func:`protocol_title`), legends
sit right of the axes.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from nlbench.benchmark.leaderboard import (
    ORACLE_TAG,
    RATE_TAG,
    _protocol_id,
    build_tables,
    last_stage,
    method_label,
    noise_sort_key,
    plot_file,
    protocol_of,
    stage_count,
)
from nlbench.errors import NLBenchError

# PNG metadata carries matplotlib's version by default; dropping it keeps the bytes stable across installs.
_SAVE = {"dpi": 120, "metadata": {"Software": None}}


def _new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
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


# ---------------------------------------------------------------------------------------------- styles

#: 20 colours: tab10, then the dark and mid shades of tab20b (hues tab10 lacks or shows lighter).
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#6b6ecf", "#b5cf6b", "#e7ba52",
            "#d6616b", "#ce6dbd")
#: line styles for non-oracle methods; ``--`` is kept for oracles, so an oracle never looks like a method
_LINESTYLES = ("-", "-.", ":", (0, (5, 1, 1, 1, 1, 1)))
_ORACLE_LINESTYLE = "--"
_MARKERS = ("o", "s", "^", "D")


@dataclass(frozen=True)
class Style:
    """How one method is drawn in every figure of a plot set."""

    colour: str
    linestyle: str | tuple
    marker: str

    def for_oracle(self, is_oracle: bool) -> Style:
        """The style as drawn: oracles are dashed (no other method is)."""
        return Style(self.colour, _ORACLE_LINESTYLE, self.marker) if is_oracle else self


def style_of(slot: int) -> Style:
    """The style of position ``slot``: colour ``slot % 20``, and per block of 10 slots a line style
    (``block % 4``) and a marker (``(block + block // 4) % 4``), so slots 0..159 all differ in
    (colour, line style, marker), neighbours differ in colour, and the first 10 are tab10, solid, dots."""
    block = slot // 10
    return Style(_COLOURS[slot % len(_COLOURS)], _LINESTYLES[block % len(_LINESTYLES)],
                 _MARKERS[(block + block // 4) % len(_MARKERS)])


def style_table(records: Iterable[dict]) -> dict[str, Style]:
    """Method label -> :class:`Style`, by the label's position in the sorted list of every method label of the
    records of the plot set, so the same method looks the same in every figure drawn together. Position, not a
    hash of the label: a hash into a readable palette collides (two methods alike) unless collisions are
    resolved by probing, which restyles too; sorting gives the strongest colours to the first methods and
    restyles only the labels sorting after a new method."""
    labels = sorted({method_label(rec) for rec in records})
    return {label: style_of(i) for i, label in enumerate(labels)}


# ---------------------------------------------------------------------------------------------- titles

_DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST", "fashion-mnist-binary": "Fashion-MNIST (binary)",
                  "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar10-jpeg": "CIFAR-10 (JPEG)",
                  "clothing1m": "Clothing1M", "synthetic": "Synthetic"}
_MODEL_NAMES = {"mlp": "MLP", "mlp512": "MLP-512", "mlp1024": "MLP-1024", "lenet": "LeNet",
                "cifar-fast": "CIFAR-fast ResNet", "resnet32": "ResNet-32", "preact-resnet18": "PreAct ResNet-18",
                "resnet34": "ResNet-34", "wrn-28-10": "WRN-28-10", "resnet50": "ResNet-50"}


def protocol_title(protocol: dict, slug: str, sid: str) -> str:
    """``Fashion-MNIST, LeNet, 3 epochs`` for a protocol (record text, unescaped: pass it through
    :func:`literal`); a protocol sharing its slug with another gets its id, as its file names do."""
    dataset, model = str(protocol.get("dataset")), str(protocol.get("model"))
    n = protocol.get("epochs")
    title = (f"{_DATASET_NAMES.get(dataset, dataset)}, {_MODEL_NAMES.get(model, model)}, "
             f"{n} epoch{'' if n == 1 else 's'}")
    return f"{title} (protocol {sid})" if slug.endswith(f"__{sid}") else title


# ---------------------------------------------------------------------------------------------- curves


class Band(NamedTuple):
    """Per-epoch statistics over seeds (NaN where no seed has a value); ``n`` is the seed count per epoch."""

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def _band(runs: Sequence[Sequence[tuple]], epochs: int) -> Band:
    grid = np.full((len(runs), epochs), np.nan)
    for i, run in enumerate(runs):
        for e, v in run:
            if e is not None and isinstance(v, int | float):
                grid[i, int(e) - 1] = float(v)
    valid = ~np.isnan(grid)
    n = valid.sum(0)
    with np.errstate(all="ignore"):
        mean = np.where(n > 0, np.nansum(grid, 0) / np.maximum(n, 1), np.nan)
    # fmin/fmax skip NaN without the all-NaN warnings of nanmin/nanmax
    return Band(mean, np.fmin.reduce(grid, axis=0), np.fmax.reduce(grid, axis=0), n)


def _curves(records: Iterable[dict], keys: Sequence[str]) -> dict[tuple[str, str], dict[str, dict]]:
    """(section, noise) -> method label -> key -> :class:`Band` over seeds, plus ``"_oracle"`` and ``"_rate"``
    (the method reads the nominal noise rate) -> bool."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    oracle: dict[str, bool] = {}
    rate: dict[str, bool] = {}
    for rec in records:
        hist = [h for h in rec.get("history") or [] if isinstance(h, dict)]
        if stage_count(hist) > 1:  # a method of several stages: its last stage, whose network is its result
            hist = [{**h, "epoch": i + 1} for i, h in enumerate(last_stage(hist))]
        if not any(keys[0] in h for h in hist):
            continue
        label = method_label(rec)
        oracle[label] = oracle.get(label, False) or bool(rec.get("oracle"))
        rate[label] = rate.get(label, False) or bool(rec.get("uses_noise_rate"))
        cell = acc[(_protocol_id(protocol_of(rec)), rec["noise"])][label]
        for key in keys:
            cell[key].append([(h.get("epoch"), h.get(key)) for h in hist])
    out: dict = {}
    for setting, methods in acc.items():
        out[setting] = {}
        for label, series in methods.items():
            epochs = max(int(e) for runs in series.values() for run in runs for e, _ in run if e is not None)
            out[setting][label] = {key: _band(runs, epochs) for key, runs in series.items()}
            out[setting][label]["_oracle"] = oracle[label]
            out[setting][label]["_rate"] = rate[label]
    return out


def _label(name: str, is_oracle: bool, uses_rate: bool = False) -> str:
    """The legend entry: the method label with the leaderboard's [ORACLE] / [NOISE RATE] tags."""
    tags = [tag for tag, on in ((ORACLE_TAG, is_oracle), (RATE_TAG, uses_rate)) if on]
    return literal(" ".join([name, *tags]))


def _settings(curves: dict, slugs: dict[str, str]) -> list[tuple[str, str]]:
    return sorted(curves, key=lambda s: (slugs[s[0]], noise_sort_key(s[1])))


def _last(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else -math.inf


def _draw_band(ax: Axes, x: np.ndarray, band: Band, colour: str, scale: float, gid: str) -> None:
    """A min–max band over seeds where at least 2 seeds have a value (nothing for a single seed)."""
    where = band.n >= 2
    if where.any():
        poly = ax.fill_between(x, scale * band.lo, scale * band.hi, where=where, color=colour, alpha=0.1,
                               linewidth=0, interpolate=False)
        poly.set_gid(gid)


def _legend_outside(fig: Figure, handles: Sequence, labels: Sequence[str], title: str | None = None,
                    loc: str = "outside right upper") -> None:
    """One legend right of every axes (constrained layout makes room for it), never over the curves."""
    ncols = 1 if len(labels) <= 22 else 2
    fig.legend(handles, labels, loc=loc, fontsize=7.5, ncols=ncols, title=title,
               title_fontsize=7.5, frameon=False)


def accuracy_figure(methods: dict[str, dict], styles: dict[str, Style], title: str) -> Figure:
    """Test accuracy (%) against epoch for one setting: per method the mean over seeds as the line and the
    min–max over seeds as a shaded band (methods with ≥ 2 seeds); the legend, ordered by last-epoch accuracy,
    sits right of the axes. ``title`` is drawn as given (escape record text with :func:`literal`)."""
    order = sorted(methods, key=lambda m: (-_last(methods[m]["test_acc"].mean), m))
    fig = _new_figure(8.0 if len(order) <= 22 else 10.0, 4.6, layout="constrained")
    ax = fig.add_subplot()
    for label in order:
        c, band = methods[label], methods[label]["test_acc"]
        style = styles[label].for_oracle(c["_oracle"])
        x = np.arange(1, len(band.mean) + 1)
        _draw_band(ax, x, band, style.colour, 100, f"band:{label}")
        ax.plot(x, 100 * band.mean, color=style.colour, linestyle=style.linestyle, marker=style.marker,
                markersize=3.5, markevery=max(1, len(x) // 10), linewidth=2.0 if c["_oracle"] else 1.4,
                label=_label(label, c["_oracle"], c["_rate"]), gid=f"line:{label}")
    fig.suptitle(title, fontsize=10)
    ax.set_title("line: mean over seeds; band: min–max over seeds (≥ 2 seeds)", fontsize=8)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend_outside(fig, *ax.get_legend_handles_labels(), title="by last-epoch accuracy")
    return fig


def weights_figure(methods: dict[str, dict], title: str) -> Figure:
    """Mean weight of clean and noisy samples against epoch, one small panel per reweighting method (sorted),
    sharing one y axis from 0 to the largest weight drawn; mean over seeds with a min–max band."""
    labels = sorted(methods)
    cols = min(math.ceil(math.sqrt(len(labels))), 4)
    rows = math.ceil(len(labels) / cols)
    fig = _new_figure(2.9 * cols + 2.0, 2.1 * rows + 0.9, layout="constrained")
    top = max([_finite_max(methods[m][k].hi) for m in labels for k in _WEIGHT_KEYS] + [1.0])
    first = None
    for i, label in enumerate(labels):
        ax = fig.add_subplot(rows, cols, i + 1, sharex=first, sharey=first)
        first = first or ax
        _weights_panel(ax, methods[label], _label(label, methods[label]["_oracle"], methods[label]["_rate"]))
        ax.set_ylim(0, 1.05 * top)
        if i % cols == 0:
            ax.set_ylabel("mean weight", fontsize=8)
        if i >= len(labels) - cols:
            ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle(title, fontsize=10)
    _legend_outside(fig, *first.get_legend_handles_labels(), title="mean over seeds,\nband: min–max",
                    loc="outside right center")
    return fig


#: history key -> (legend label, colour, line style) in the weights panels
_WEIGHT_KEYS = {"w_clean_mean": ("clean samples", "#1f77b4", "-"), "w_noisy_mean": ("noisy samples", "#d62728", "--")}


def _finite_max(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def _weights_panel(ax: Axes, curves: dict, title: str) -> None:
    for key, (name, colour, linestyle) in _WEIGHT_KEYS.items():
        band = curves[key]
        x = np.arange(1, len(band.mean) + 1)
        _draw_band(ax, x, band, colour, 1, f"band:{key}")
        ax.plot(x, band.mean, color=colour, linestyle=linestyle, marker="o" if key == "w_clean_mean" else "x",
                markersize=3, markevery=max(1, len(x) // 10), linewidth=1.4, label=name)
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def plot_accuracy(records: Sequence[dict], out_dir: str | os.PathLike, slugs: dict[str, str],
                  titles: dict[str, str] | None = None, styles: dict[str, Style] | None = None) -> list[Path]:
    """One ``<slug>__<noise>__acc.png`` per setting (:func:`accuracy_figure`). ``titles`` maps a section to its
    title (:func:`protocol_title`, default the slug); ``styles`` defaults to :func:`style_table` of ``records``."""
    styles = styles or style_table(records)
    curves = _curves(records, ["test_acc"])
    paths = []
    for sid, noise in _settings(curves, slugs):
        head = (titles or {}).get(sid, slugs[sid])
        fig = accuracy_figure(curves[(sid, noise)], styles, literal(f"{head} — {noise}: test accuracy"))
        paths.append(_save(fig, out_path(out_dir, plot_file(slugs[sid], noise, "acc"))))
    return paths


def plot_weights(records: Sequence[dict], out_dir: str | os.PathLike, slugs: dict[str, str],
                 titles: dict[str, str] | None = None) -> list[Path]:
    """One ``<slug>__<noise>__weights.png`` per setting with weight telemetry (:func:`weights_figure`)."""
    curves = _curves(records, list(_WEIGHT_KEYS))
    paths = []
    for sid, noise in _settings(curves, slugs):
        head = (titles or {}).get(sid, slugs[sid])
        fig = weights_figure(curves[(sid, noise)], literal(f"{head} — {noise}: mean weight of clean vs noisy samples"))
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
    fig = _new_figure(8.0, 1.4 + 0.3 * half)
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
        ax.set_title(title, fontsize=9, pad=10)
    return _save(fig, Path(path))


def plot_all(records: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Every plot for ``records`` (valid records, see :func:`nlbench.benchmark.records.scan_records`) under
    ``out_dir``; returns the files written, in a fixed order."""
    records = list(records)
    tables = build_tables(records)
    slugs = dict(zip(tables.sections["section"], tables.sections["slug"], strict=True))
    titles = {sec.section: protocol_title(sec.protocol, sec.slug, sec.section)
              for sec in tables.sections.itertuples(index=False)}
    styles = style_table(records)  # one table for every figure: a method looks the same in all of them
    paths = plot_accuracy(records, out_dir, slugs, titles, styles) + plot_weights(records, out_dir, slugs, titles)
    for sec in tables.sections.itertuples(index=False):
        ranks = tables.ranks[tables.ranks["section"] == sec.section].sort_values("method")
        tests = tables.tests[tables.tests["section"] == sec.section]
        if len(ranks) < 2 or tests.empty or not ranks["avg_rank"].notna().all():
            continue
        cd = float(tests.iloc[0]["cd"])
        n = int(tests.iloc[0]["n_settings"])
        paths.append(plot_cd(list(ranks["method"]), list(ranks["avg_rank"]), cd,
                             out_path(out_dir, plot_file(sec.slug, None, "cd")),
                             title=literal(f"{titles[sec.section]}: average ranks over {n} settings "
                                           "(Nemenyi, α = 0.05)")))
    return paths
