"""The leaderboard: per-setting statistics over seeds and ranks across settings, rendered as Markdown.

Records are grouped into *sections*, one per protocol (the run config without method, noise, seed and method
options: dataset, model, epochs, batch size, learning rate and schedule, meta size, ...), so runs made under
different protocols are never averaged together. Within a section a *setting* is a noise spec; ``clean`` is
the reference setting (shown apart, never ranked). Per setting and method (a method run with non-default
options is its own entry, ``name[key=value]``):

* last-epoch test accuracy (the primary number): mean ± sample std over the seeds whose run finished, ``n``,
  and the 95% Student-t interval (:func:`stats.t_interval`); failed runs are not averaged in but are counted
  in their own column, never hidden;
* best-epoch accuracy, labelled "best epoch (optimistic)": it picks the epoch by test accuracy;
* a paired t-test against ``erm`` over the seeds both have, Holm-adjusted across the methods of the setting
  (the oracle is not part of the family);
* methods statistically tied with the best (:func:`stats.tied_with_best`; the oracle cannot be best) in bold;
* cost: mean epoch time relative to ``erm`` in the same setting.

A method of several stages (``forward`` and ``glc`` train a second network after the first, see
:meth:`nlbench.methods.Method.stages`) is judged by its last stage, whose network is its result: its ``final``
numbers summarise that stage, and :func:`val_selected_acc` selects within it; its cost counts every stage
(:func:`mean_epoch_time`: the time per epoch of the protocol).

Across the settings of a section: average ranks, the Friedman test and the Nemenyi critical difference over
the settings where every ranked method has a result (oracle excluded, listed with ``[ORACLE]``).

Rendering is deterministic: fixed float formats, fixed sort orders with name tie-breakers and no current
time, so the same records (in any order) give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nlbench.benchmark import stats

BASELINE = "erm"
REFERENCE_NOISE = "clean"
ORACLE_TAG = "[ORACLE]"
RATE_TAG = "[NOISE RATE]"
#: What a leaderboard says where a linked plot file is missing.
NO_PLOTS = "not drawn yet (`nlbench plot` draws the plots of these records)."
#: config keys that vary within a section; everything else in the config is the section's protocol
PER_RUN_KEYS = ("method", "noise", "seed", "method_options", "record_options")


# ------------------------------------------------------------------------------------------- helpers


def noise_sort_key(noise: str) -> tuple:
    """``clean`` first, then by kind and numeric rate: sym20 < sym50 < sym80 < sym100 (not lexicographic)."""
    m = re.match(r"^(.*?)(\d+(?:\.\d+)?)$", noise)
    kind, rate = (m.group(1), float(m.group(2))) if m else (noise, -1.0)
    return (noise != REFERENCE_NOISE, kind, rate, noise)


def method_label(record: dict) -> str:
    """``erm``, or ``surrogate[alpha=0.5]`` for a run given method options (a different entry).

    Options that the record's protocol preset gives the method (a preset's ``method_defaults``, e.g.
    fmnist-memorize's ``alpha=3`` for the surrogate) belong to the protocol, not to the entry's name, so that run
    is plain ``surrogate``. A run of that protocol WITHOUT such an option is another entry:
    ``surrogate[alpha="built-in"]``. So do the method's defaults for the noise's family (the record's
    ``family_options``, e.g. ELR's asymmetric-noise config on ``pairflip45``): that run is plain ``elr``.
    """
    opts = dict((record.get("config") or {}).get("method_options") or {})
    family = record.get("family_options")
    family = {k: v for k, v in family.items() if opts.get(k) == v} if isinstance(family, dict) else {}
    defaults = _protocol_method_defaults(record)
    shown = {k: v for k, v in opts.items() if k not in family and (k not in defaults or defaults[k] != v)}
    shown.update({k: "built-in" for k in defaults if k not in opts})
    if not shown:
        return record["method"]
    inner = ",".join(f"{k}={json.dumps(shown[k], sort_keys=True)}" for k in sorted(shown))
    return f"{record['method']}[{inner}]"


def _protocol_method_defaults(record: dict) -> dict[str, Any]:
    """The options the preset of ``record``'s protocol gives its method (``{}`` without such a preset)."""
    try:
        key = json.dumps(protocol_of(record), sort_keys=True, default=str)
    except (KeyError, TypeError, AttributeError):
        return {}
    per_method = _preset_method_defaults(key)
    value = per_method.get(record.get("method"), {})
    return value if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=256)
def _preset_method_defaults(protocol_json: str) -> dict[str, dict[str, Any]]:
    from nlbench.benchmark.config import METHOD_DEFAULTS, PRESETS

    preset = _preset_of(json.loads(protocol_json))
    return dict(PRESETS.get(preset).get(METHOD_DEFAULTS, {})) if preset else {}


def protocol_of(record: dict) -> dict[str, Any]:
    """The record's config without the per-run keys: what must be equal for runs to be compared."""
    cfg = dict(record.get("config") or {})
    for key in PER_RUN_KEYS:
        cfg.pop(key, None)
    cfg.setdefault("dataset", record["dataset"])
    cfg.setdefault("model", record["model"])
    return cfg


def _protocol_id(protocol: dict) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:6]


def as_float(v: Any) -> float:
    """A record's number as a float; NaN for a missing, boolean or non-numeric value."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v is not None else math.nan


def stage_count(history: list) -> int:
    """How many stages a record's history spans: its largest ``stage`` (1 for a method of one stage)."""
    stages = [h.get("stage") for h in history if isinstance(h, dict)]
    return max([s for s in stages if isinstance(s, int) and not isinstance(s, bool) and s >= 1], default=1)


def last_stage(history: list) -> list:
    """The entries of a record's last stage (the whole history for a method of one stage)."""
    last = stage_count(history)
    return [h for h in history if isinstance(h, dict) and h.get("stage", 1) == last]


def mean_epoch_time(history: list) -> float:
    """Mean ``epoch_time_s`` over a record's history (NaN if none is logged), times its number of stages: the
    time per epoch of the protocol, so a method of two stages (2 x epochs epochs) costs what it spends."""
    times = [as_float(h.get("epoch_time_s")) for h in history if isinstance(h, dict)]
    times = [t for t in times if math.isfinite(t)]
    return float(np.mean(times)) * stage_count(history) if times else math.nan


def val_selected_acc(history: list) -> float:
    """Test accuracy at the epoch with the best accuracy on the noisy validation split (the first such epoch,
    within the last stage of a method of several stages); NaN if the run had no validation split. This is the
    selection rule a practitioner can apply."""
    best, acc = -math.inf, math.nan
    for h in last_stage(history):
        if not isinstance(h, dict):
            continue
        v = as_float(h.get("val_acc"))
        if math.isfinite(v) and v > best:
            best, acc = v, as_float(h.get("test_acc"))
    return acc


def test_curve(history: list) -> tuple:
    """The per-epoch test accuracies of a record, for telling identical computations apart."""
    return tuple(as_float(h.get("test_acc")) if isinstance(h, dict) else math.nan for h in history)


def plot_file(slug: str, noise: str | None, kind: str) -> str:
    """Stable PNG names shared by :mod:`nlbench.benchmark.plots` and the leaderboard's links:
    ``<slug>__<noise>__acc.png``, ``<slug>__<noise>__weights.png``, ``<slug>__cd.png``."""
    return f"{slug}__{noise}__{kind}.png" if noise else f"{slug}__{kind}.png"


# -------------------------------------------------------------------------------------------- tables


@dataclass
class Tables:
    """The leaderboard's numbers as DataFrames (all fractions, not percent).

    * ``runs``: one row per record (``section``, ``noise``, ``method`` label, ``seed``, ``status``, ``oracle``,
      ``last_acc``/``best_acc``/``last5_acc`` (NaN unless ok), ``epoch_time``, ``realised_rate``,
      ``has_weights`` (weight telemetry in the history), ...).
    * ``cells``: one row per (section, noise, method): ``n_runs``, ``n_failed``, ``n``, ``mean``, ``std``,
      ``lo``/``hi`` (95% t-interval), ``best_mean``/``best_std``, ``delta_vs_erm``, ``n_pairs``, ``p_vs_erm``,
      ``p_holm``, ``is_best``, ``tied``, ``epoch_time``, ``cost`` (epoch time / erm's), ``reference``.
    * ``ranks``: one row per (section, ranked method): ``avg_rank``, ``mean_acc`` over ranked settings,
      ``cost`` (mean over settings shared with erm of the method's epoch time / erm's).
    * ``tests``: one row per section: Friedman ``chi2``, ``p``, ``n_settings``, ``k_methods``, Nemenyi ``cd``.
    * ``sections``: one row per section: ``slug`` (plot names), ``protocol`` (dict), ``seeds``, ``hashes``.
    """

    runs: pd.DataFrame
    cells: pd.DataFrame
    ranks: pd.DataFrame
    tests: pd.DataFrame
    sections: pd.DataFrame


def _runs_frame(records: Iterable[dict]) -> tuple[pd.DataFrame, dict[str, dict]]:
    from nlbench.benchmark.records import is_stale

    rows, protocols = [], {}
    for rec in records:
        protocol = protocol_of(rec)
        sid = _protocol_id(protocol)
        protocols[sid] = protocol
        final = rec.get("final") or {}
        ok = rec.get("status") == "ok"
        rows.append({
            "section": sid, "dataset": rec["dataset"], "model": rec["model"], "noise": rec["noise"],
            "method": method_label(rec), "seed": int(rec["seed"]), "status": rec["status"],
            "oracle": bool(rec.get("oracle", False)), "reads_rate": rec.get("uses_noise_rate") is True,
            "config_hash": rec["config_hash"],
            "last_acc": as_float(final.get("last_acc")) if ok else math.nan,
            "best_acc": as_float(final.get("best_acc")) if ok else math.nan,
            "last5_acc": as_float(final.get("last5_acc")) if ok else math.nan,
            "val_acc_sel": val_selected_acc(rec.get("history") or []) if ok else math.nan,
            "curve": test_curve(rec.get("history") or []) if ok else (),
            "epoch_time": mean_epoch_time(rec.get("history") or []) if ok else math.nan,
            "realised_rate": as_float((rec.get("noise_report") or {}).get("realised_rate")),
            "has_weights": any(isinstance(h, dict) and "w_clean_mean" in h for h in rec.get("history") or []),
            "stale": is_stale(rec),
        })
    cols = ["section", "dataset", "model", "noise", "method", "seed", "status", "oracle", "reads_rate",
            "config_hash", "last_acc", "best_acc", "last5_acc", "val_acc_sel", "curve", "epoch_time",
            "realised_rate", "has_weights", "stale"]
    runs = pd.DataFrame(rows, columns=cols)
    # Fixed order whatever the input order; two records of one (setting, method, seed) differ in record_options
    # or one supersedes the other (records.is_stale): keep a current one, then the one with the smaller hash.
    runs = runs.sort_values(["section", "noise", "method", "seed", "stale", "config_hash"], kind="stable")
    runs = runs.drop_duplicates(["section", "noise", "method", "seed"], keep="first").reset_index(drop=True)
    return runs, protocols


def _slugs(protocols: dict[str, dict]) -> dict[str, str]:
    base = {sid: f"{p['dataset']}__{p['model']}__e{p.get('epochs')}" for sid, p in protocols.items()}
    counts: dict[str, int] = {}
    for s in base.values():
        counts[s] = counts.get(s, 0) + 1
    return {sid: s if counts[s] == 1 else f"{s}__{sid}" for sid, s in base.items()}


def _series(group: pd.DataFrame, column: str = "last_acc") -> pd.Series:
    return pd.Series(group[column].to_numpy(float), index=group["seed"].to_numpy())


def _setting_cells(section: str, noise: str, runs: pd.DataFrame, alpha: float) -> list[dict]:
    by_method = {m: g for m, g in runs.groupby("method", sort=True)}
    base = by_method.get(BASELINE)
    base_time = float(base["epoch_time"].mean()) if base is not None else math.nan
    cells = []
    curves = {m: {int(r.seed): r.curve for r in g.itertuples(index=False) if r.curve} for m, g in by_method.items()}
    for method, g in by_method.items():
        # a flagged method (ground truth, or the nominal noise rate) is a reference, never a contender
        oracle = bool(g["oracle"].any()) or bool(g["reads_rate"].any())
        mean, std, n, lo, hi = stats.t_interval(g["last_acc"].to_numpy(float))
        best_mean, best_std, *_ = stats.t_interval(g["best_acc"].to_numpy(float))
        val_mean, val_std, *_ = stats.t_interval(g["val_acc_sel"].to_numpy(float))
        mine = curves[method]
        same_as = sorted(other for other, theirs in curves.items() if other != method and mine
                         and set(mine) == set(theirs) and all(mine[k] == theirs[k] for k in mine))
        delta, p, n_pairs = math.nan, math.nan, 0
        if base is not None and method != BASELINE:
            a, b = _series(g).align(_series(base), join="inner")
            shared = ~(np.isnan(a.to_numpy()) | np.isnan(b.to_numpy()))
            n_pairs = int(shared.sum())
            if n_pairs:
                delta = float(np.mean(a.to_numpy()[shared] - b.to_numpy()[shared]))
            _, p, _ = stats.paired_test(_series(g), _series(base))
        epoch_time = float(g["epoch_time"].mean())
        cells.append({
            "section": section, "noise": noise, "method": method, "oracle": oracle,
            "tag": ORACLE_TAG if bool(g["oracle"].any()) else (RATE_TAG if bool(g["reads_rate"].any()) else ""),
            "val_mean": val_mean, "val_std": val_std, "same_as": ",".join(same_as),
            "gap_mean": float(np.nanmean(g["best_acc"] - g["last_acc"])) if n else math.nan,
            "reference": noise == REFERENCE_NOISE, "n_runs": len(g), "n_failed": int((g["status"] != "ok").sum()),
            "n": n, "mean": mean, "std": std, "lo": lo, "hi": hi, "best_mean": best_mean, "best_std": best_std,
            "last5_mean": float(np.nanmean(g["last5_acc"])) if n else math.nan,
            "realised_rate": float(g["realised_rate"].mean()), "delta_vs_erm": delta, "n_pairs": n_pairs,
            "p_vs_erm": p, "epoch_time": epoch_time,
            "cost": epoch_time / base_time if base_time > 0 else math.nan,
        })
    # Holm across the methods compared with erm in this setting; the oracle is a reference, not a contender.
    family = [i for i, c in enumerate(cells) if not c["oracle"] and c["method"] != BASELINE]
    adjusted = stats.holm([cells[i]["p_vs_erm"] for i in family]) if family else []
    for c in cells:
        c["p_holm"] = math.nan
    for i, p_adj in zip(family, adjusted, strict=True):
        cells[i]["p_holm"] = float(p_adj)
    contenders = {c["method"]: _series(by_method[c["method"]]) for c in cells if not c["oracle"]}
    tied = stats.tied_with_best(contenders, alpha=alpha) if contenders else set()
    means = {m: float(np.nanmean(s)) for m, s in contenders.items() if s.notna().any()}
    best = max(means, key=lambda m: means[m]) if means else None  # dict order is sorted: ties go to the name
    for c in cells:
        c["tied"] = c["method"] in tied
        c["is_best"] = c["method"] == best
    return cells


def build_tables(records: Iterable[dict], alpha: float = 0.05) -> Tables:
    """Aggregate valid records (see :func:`nlbench.benchmark.records.scan_records`) into the leaderboard's
    tables; input order does not matter. ``alpha`` is the level of the tests (ties with the best, CD)."""
    runs, protocols = _runs_frame(records)
    slugs = _slugs(protocols)
    cells: list[dict] = []
    for (section, noise), g in runs.groupby(["section", "noise"], sort=True):
        cells += _setting_cells(section, noise, g, alpha)
    cell_cols = ["section", "noise", "method", "oracle", "tag", "reference", "n_runs", "n_failed", "n", "mean",
                 "std", "lo", "hi", "best_mean", "best_std", "val_mean", "val_std", "gap_mean", "same_as",
                 "last5_mean", "realised_rate", "delta_vs_erm", "n_pairs", "p_vs_erm", "p_holm", "is_best", "tied",
                 "epoch_time", "cost"]
    cells_df = pd.DataFrame(cells, columns=cell_cols)

    rank_rows, test_rows, section_rows = [], [], []
    # longer protocols first: the memorisation protocol leads, the short one follows
    for sid in sorted(protocols, key=lambda s: (-as_float(protocols[s].get("epochs")), slugs[s], s)):
        sec_runs = runs[runs["section"] == sid]
        section_rows.append({"section": sid, "slug": slugs[sid], "protocol": protocols[sid],
                             "seeds": sorted(set(sec_runs["seed"].tolist())),
                             "hashes": sorted(sec_runs["config_hash"].tolist())})
        sc = cells_df[(cells_df["section"] == sid) & ~cells_df["reference"] & ~cells_df["oracle"]]
        scores = sc.pivot(index="noise", columns="method", values="mean")
        scores = scores.reindex(index=sorted(scores.index, key=noise_sort_key), columns=sorted(scores.columns))
        if scores.shape[1] == 0:
            continue
        # Friedman needs complete blocks. A method without a result in some setting (every run diverged) is left
        # out of the ranking, rather than dropping the setting for all: one failing method must not shrink the
        # comparison of the others to the few settings it survived.
        gaps, n_noisy = scores.isna().sum(), int(scores.shape[0])
        unranked = {m: int(n) for m, n in gaps.items() if n > 0}
        if 0 < len(unranked) <= scores.shape[1] - 2:
            scores = scores.drop(columns=list(unranked))
        else:
            unranked = {}
        ranks = stats.average_ranks(scores)
        complete = scores.dropna(axis=0, how="any")
        chi2, p, n_set, k = stats.friedman(scores)
        cd = stats.nemenyi_cd(k, n_set, alpha) if k >= 2 and n_set >= 1 else math.nan
        test_rows.append({"section": sid, "chi2": chi2, "p": p, "n_settings": n_set, "k_methods": k, "cd": cd,
                          "unranked": unranked, "settings": n_noisy})
        times = sc.pivot(index="noise", columns="method", values="epoch_time")
        for method in scores.columns:
            cost = math.nan
            if BASELINE in times.columns:
                both = pd.DataFrame({"m": times[method], "erm": times[BASELINE]}).dropna()
                if len(both) and both["erm"].mean() > 0:
                    cost = float(both["m"].mean() / both["erm"].mean())
            rank_rows.append({"section": sid, "method": method, "avg_rank": float(ranks[method]),
                              "mean_acc": float(complete[method].mean()) if len(complete) else math.nan,
                              "n_settings": n_set, "cost": cost})
    ranks_df = pd.DataFrame(rank_rows, columns=["section", "method", "avg_rank", "mean_acc", "n_settings", "cost"])
    tests_df = pd.DataFrame(test_rows, columns=["section", "chi2", "p", "n_settings", "k_methods", "cd", "unranked",
                                                "settings"])
    sections_df = pd.DataFrame(section_rows, columns=["section", "slug", "protocol", "seeds", "hashes"])
    return Tables(runs, cells_df, ranks_df, tests_df, sections_df)


# ------------------------------------------------------------------------------------------ rendering


def fmt_pct(v: float) -> str:
    """A fraction as a percentage with 2 decimals; ``—`` for NaN."""
    return "—" if not math.isfinite(v) else f"{100 * v:.2f}"


def fmt_p(p: float) -> str:
    """p-values: 3 decimals, scientific below 0.001, ``—`` when no test was possible."""
    if not math.isfinite(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def fmt_mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{fmt_pct(mean)} ± {fmt_pct(std)}" if math.isfinite(std) else fmt_pct(mean)


def _name(method: str, tag: str) -> str:
    return f"{method} {tag}" if tag else method


def md_escape(text: str) -> str:
    """Text from a record made safe for one Markdown table cell, heading or code span: no row or column breaks
    (control characters become spaces, ``|`` and ``\\`` are escaped), no raw HTML (``&``, ``<``, ``>`` become
    entities, so a method option ``<img onerror=...>`` renders as text), and no backtick to end a code span."""
    text = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", str(text)).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1) -> list[str]:
    """Markdown table lines; columns from ``right_from`` on are right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _cell_order(cells: pd.DataFrame) -> pd.DataFrame:
    # contenders by mean (best first, no result last), the name breaking ties; oracles after them
    key = cells.assign(_o=cells["oracle"].astype(int), _m=-cells["mean"].fillna(-np.inf))
    return key.sort_values(["_o", "_m", "method"], kind="stable")


def _epochs(protocol: dict) -> str:
    n = protocol.get("epochs")
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def fmt_ci(lo: float, hi: float) -> str:
    """A 95% interval of an accuracy, its display clipped to the metric's range [0, 100] (the interval itself may
    run past it: a t-interval knows nothing of bounds)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "[—, —]"
    return f"[{fmt_pct(min(max(lo, 0.0), 1.0))}, {fmt_pct(min(max(hi, 0.0), 1.0))}]"


def _preset_of(protocol: dict) -> str | None:
    """The name of the preset whose values the protocol has (the first, sorted), if any."""
    from nlbench.benchmark.config import PRESETS, RunConfig

    for name in PRESETS.list():
        try:
            want = protocol_of({"config": RunConfig.from_preset(name).to_dict(), "dataset": "", "model": ""})
        except Exception:  # a preset that needs data options the defaults lack: not this protocol
            continue
        if want == protocol:
            return name
    return None


def _memorisation_line(cells: pd.DataFrame) -> str:
    """ERM's best-epoch minus last-epoch accuracy per setting: whether this protocol reaches memorisation."""
    erm = cells[cells["method"] == BASELINE]
    if erm.empty:
        return "**Memorisation indicator** (erm's best − last epoch accuracy): no erm records."
    parts = [f"{md_escape(c.noise)} {100 * c.gap_mean:.2f}" for c in
             erm.sort_values("noise", key=lambda col: col.map(noise_sort_key)).itertuples(index=False)
             if math.isfinite(c.gap_mean)]
    return ("**Memorisation indicator** (erm's best-epoch − last-epoch test accuracy, points, mean over seeds; "
            "large on noisy settings and near 0 on clean labels when erm memorises the noise): "
            + ", ".join(parts) + ".")


def _protocol_line(protocol: dict, seeds: list[int], readme: str) -> str:
    p = protocol
    sched = p.get("schedule", "?")
    if sched == "step":
        sched += f" ×{p.get('gamma')} at epochs {', '.join(str(m) for m in p.get('milestones') or [])}"
    parts = [f"dataset `{p['dataset']}`", f"model `{p['model']}`", _epochs(p),
             f"batch {p.get('batch_size')}",
             f"SGD lr {p.get('lr')} ({sched} schedule, momentum {p.get('momentum')}, "
             f"weight decay {p.get('weight_decay')})",
             f"clean meta set {p.get('meta_size')}", f"noisy validation {p.get('val_size')}",
             f"augmentation {'on' if p.get('augment') else 'off'}",
             f"seeds {', '.join(str(s) for s in seeds)}"]
    if p.get("noise_seed") is not None:
        parts.append(f"noise seed fixed at {p['noise_seed']}")
    if p.get("dataset_options"):
        parts.append("dataset options " + md_escape(", ".join(f"{k}={json.dumps(v)}" for k, v in
                                                             sorted(p["dataset_options"].items()))))
    return (f"**Protocol.** {'; '.join(parts)}. Noise definitions: [{readme}#noise]({readme}#noise).")


def _wall_time_lines(hashes: set[str], grid_logs: Sequence[dict]) -> list[str]:
    lines = []
    for log in sorted(grid_logs, key=lambda g: str(g.get("name"))):
        covered = hashes & set(log.get("config_hashes") or [])
        if not covered:
            continue
        total = len(log.get("config_hashes") or [])
        cum = as_float(log.get("cumulative_wall_time_s"))
        cum_s = f"; cumulative {cum:.1f} s over {md_escape(log.get('invocations', '?'))} invocation(s)" \
            if math.isfinite(cum) else ""
        if math.isfinite(as_float(log.get("wall_time_s"))):
            lines.append(f"- grid `{md_escape(log.get('name'))}` ({len(covered)} of its {total} runs shown here): "
                         f"measured wall time {as_float(log['wall_time_s']):.1f} s "
                         f"({as_float(log['wall_time_s']) / 60:.1f} min) for the invocation that completed "
                         f"it ({md_escape(log.get('runs_in_last_invocation', '?'))} runs, finished "
                         f"{md_escape(log.get('finished'))})"
                         f"{cum_s}.")
        else:
            lines.append(f"- grid `{md_escape(log.get('name'))}` ({len(covered)} of its {total} runs shown here): "
                         f"not completed yet{cum_s}.")
    return lines or ["- no grid log covers these records (runs made with `nlbench run`)."]


def _superseded_lines(records: Sequence[dict]) -> list[str]:
    """A warning naming the records made by an older version of their method (its computation has changed since:
    a fixed deviation from the official code); empty when there are none, so other leaderboards keep their bytes."""
    from nlbench.benchmark.records import is_stale

    old: dict[str, int] = {}
    for r in records:
        if isinstance(r, dict) and is_stale(r):
            old[str(r.get("method"))] = old.get(str(r.get("method")), 0) + 1
    if not old:
        return []
    parts = [f"`{md_escape(m)}` ({n})" for m, n in sorted(old.items())]
    return [f"**Superseded records.** {sum(old.values())} records were made by an older version of their method, "
            f"whose computation has since been fixed to match the official code (docs/methods.md, \"Faithfulness to "
            f"the official code\"): {', '.join(parts)}. Where a current record of the same run exists it is shown "
            "instead; the others' numbers below are the old implementation's until `nlbench grid` trains them "
            "again.", ""]


def render_leaderboard(records: Iterable[dict], grid_logs: Sequence[dict] = (), *, plots_dir: str = "results/plots",
                       readme: str = "README.md", alpha: float = 0.05, title: str = "nlbench leaderboard",
                       tables: Tables | None = None, plot_exists: Callable[[str], bool] | None = None) -> str:
    """The leaderboard as Markdown (see the module docstring for what it reports).

    ``grid_logs`` are the grid logs (:func:`nlbench.benchmark.grid.read_grid_logs`) whose measured wall time is
    stated for the sections they cover; ``plots_dir`` and ``readme`` are the link targets as seen from where
    the Markdown will live. Pass ``tables`` to reuse :func:`build_tables` output. ``plot_exists(file_name)``
    says whether a plot file is in ``plots_dir``: only those are linked, and a section whose plots are all
    missing says how to draw them (default: link every plot).
    """
    has = plot_exists or (lambda _name: True)
    records = list(records)
    t = tables if tables is not None else build_tables(records, alpha=alpha)
    n_ok = int((t.runs["status"] == "ok").sum())
    out = [f"# {title}", "",
           f"Generated by `nlbench leaderboard` from {len(t.runs)} run records ({n_ok} ok, "
           f"{len(t.runs) - n_ok} failed). Primary metric: **test accuracy at the last epoch** (%), mean ± sample "
           "std over seeds; `n` counts finished runs, failed runs (e.g. divergence) are listed per cell and not "
           "averaged in. 95% CI: Student-t interval of the mean. *Best epoch (optimistic)* picks the epoch by "
           "test accuracy, as much of the literature does, and overstates what a method delivers. "
           f"Δ vs erm: mean paired difference over shared seeds; p: paired t-test against `erm`, Holm-adjusted "
           f"across the methods of the setting. **Bold**: the best method of the setting or statistically tied "
           f"with it (paired t-test, Holm, α = {alpha}). Epoch time × erm: mean epoch time relative to `erm` in "
           f"the same setting. *Noisy-val selected*: test accuracy at the epoch with the best accuracy on the noisy "
           f"validation split, the selection rule a practitioner can use (— without a validation split). "
           f"{ORACLE_TAG} methods read ground truth: they are upper bounds, never best and never ranked. "
           f"{RATE_TAG} methods read the nominal noise rate, which a practitioner does not know: shown, never best "
           "and never ranked. Methods whose records equal another method's at every epoch are flagged below the "
           "setting's table.", ""]
    staged = sorted({str(r.get("method")) for r in records if isinstance(r, dict) and r.get("stages", 1) != 1})
    if staged:  # said only where such records are, so other leaderboards keep their bytes
        out[-2] += (" Methods of several stages (" + ", ".join(f"`{md_escape(m)}`" for m in staged) + ") train "
                    "the protocol's epochs once per stage: their accuracies are the last stage's (epochs counted "
                    "within it), and their epoch time counts every stage per epoch of the protocol.")
    out += _superseded_lines(records)
    if t.runs.empty:
        out += ["No records yet: run `nlbench grid` first.", ""]
        return "\n".join(out)
    for sec in t.sections.itertuples(index=False):
        slug, protocol = sec.slug, sec.protocol
        cells = t.cells[t.cells["section"] == sec.section]
        preset = _preset_of(protocol)
        name = f" · preset `{preset}`" if preset else ""
        out += [f"## {md_escape(protocol['dataset'])} · {md_escape(protocol['model'])} · {_epochs(protocol)}{name}",
                "", _protocol_line(protocol, sec.seeds, readme), "", _memorisation_line(cells), "",
                "**Measured wall time.**", ""]
        out += _wall_time_lines(set(sec.hashes), grid_logs)
        out.append("")
        ref = cells[cells["reference"]]
        if len(ref):
            out += ["### Clean reference (no label noise)", ""]
            rows = [[_name(md_escape(c.method), c.tag), fmt_mean_std(c.mean, c.std), str(c.n),
                     fmt_ci(c.lo, c.hi), fmt_mean_std(c.val_mean, c.val_std),
                     fmt_mean_std(c.best_mean, c.best_std), str(c.n_failed)]
                    for c in ref.sort_values(["oracle", "method"]).itertuples(index=False)]
            out += md_table(["method", "last epoch acc (%)", "n", "95% CI", "noisy-val selected",
                             "best epoch (optimistic)", "failed"], rows)
            out.append("")
        noises = sorted(set(cells.loc[~cells["reference"], "noise"]), key=noise_sort_key)
        for noise in noises:
            nc = _cell_order(cells[cells["noise"] == noise])
            rate = float(nc["realised_rate"].mean())
            out += [f"### {md_escape(noise)} (realised noise rate {fmt_pct(rate)}%)", ""]
            rows = []
            for c in nc.itertuples(index=False):
                acc = fmt_mean_std(c.mean, c.std)
                rows.append([_name(md_escape(c.method), c.tag), f"**{acc}**" if c.tied else acc, str(c.n),
                             fmt_ci(c.lo, c.hi), fmt_mean_std(c.val_mean, c.val_std),
                             fmt_mean_std(c.best_mean, c.best_std), str(c.n_failed),
                             "—" if not math.isfinite(c.delta_vs_erm) else f"{100 * c.delta_vs_erm:+.2f}",
                             fmt_p(c.p_holm), "—" if not math.isfinite(c.cost) else f"{c.cost:.2f}"])
            out += md_table(["method", "last epoch acc (%)", "n", "95% CI", "noisy-val selected",
                             "best epoch (optimistic)", "failed", "Δ vs erm", "p vs erm (Holm)", "epoch time × erm"],
                            rows)
            same = [f"`{md_escape(c.method)}` = `{'`, `'.join(md_escape(o) for o in c.same_as.split(','))}`"
                    for c in nc.sort_values("method").itertuples(index=False) if c.same_as]
            if same:
                out += ["", "**Identical records** (the same test accuracy at every epoch on every seed, so the "
                        "same computation here): " + "; ".join(same) + "."]
            links = [f"[accuracy per epoch]({plots_dir}/{plot_file(slug, noise, 'acc')})"
                     ] if has(plot_file(slug, noise, "acc")) else []
            sec_runs = t.runs[(t.runs["section"] == sec.section) & (t.runs["noise"] == noise)]
            if sec_runs["has_weights"].any() and has(plot_file(slug, noise, "weights")):
                links.append(f"[weights of clean vs noisy samples]({plots_dir}/{plot_file(slug, noise, 'weights')})"
                             " (reweighting methods)")
            out += ["", "Plots: " + (" · ".join(links) if links else NO_PLOTS), ""]
        out += _ranks_section(t, sec.section, cells, plots_dir, slug, alpha, has)
    return "\n".join(out).rstrip("\n") + "\n"


def _ranks_section(t: Tables, section: str, cells: pd.DataFrame, plots_dir: str, slug: str,
                   alpha: float, has: Callable[[str], bool] = lambda _name: True) -> list[str]:
    ranks = t.ranks[t.ranks["section"] == section]
    tests = t.tests[t.tests["section"] == section]
    oracles = sorted(set(cells.loc[cells["oracle"], "method"]))
    if ranks.empty:
        return []
    out = ["### Ranks across settings", ""]
    order = ranks.assign(_r=ranks["avg_rank"].fillna(np.inf)).sort_values(["_r", "method"], kind="stable")
    rows = [[md_escape(r.method), "—" if not math.isfinite(r.avg_rank) else f"{r.avg_rank:.2f}", fmt_pct(r.mean_acc),
             "—" if not math.isfinite(r.cost) else f"{r.cost:.2f}"] for r in order.itertuples(index=False)]
    out += md_table(["method", "average rank", "mean last epoch acc (%)", "epoch time × erm"], rows)
    out.append("")
    tr = tests.iloc[0]
    n_set, k = int(tr["n_settings"]), int(tr["k_methods"])
    out.append(f"Ranks over the {n_set} noisy settings where all {k} ranked methods have a result (rank 1 = best).")
    if math.isfinite(tr["chi2"]):
        out.append(f"Friedman test: χ² = {tr['chi2']:.3f}, p = {fmt_p(tr['p'])} (N = {n_set}, k = {k}).")
    else:
        out.append(f"Friedman test: not defined (needs k ≥ 3 methods and N ≥ 2 settings; N = {n_set}, k = {k}).")
    if math.isfinite(tr["cd"]):
        cd_link = f"{plots_dir}/{plot_file(slug, None, 'cd')}"
        diagram = f"[critical-difference diagram]({cd_link})" if has(plot_file(slug, None, "cd")) else \
            "Critical-difference diagram: " + NO_PLOTS
        out.append(f"Nemenyi critical difference (α = {alpha}): CD = {tr['cd']:.3f}; average ranks further apart than "
                   f"this differ significantly. {diagram}")
    unranked = tr["unranked"] if isinstance(tr["unranked"], dict) else {}
    if unranked:
        out.append("Not ranked, for lack of a result in some settings (every run failed there): " + ", ".join(
            f"{md_escape(m)} ({n} of {int(tr['settings'])})" for m, n in sorted(unranked.items())) + ".")
    if oracles:
        tags = dict(zip(cells["method"], cells["tag"], strict=True))
        out.append("Not ranked: " + ", ".join(_name(md_escape(m), tags[m]) for m in oracles) +
                   " (read ground truth or the nominal noise rate).")
    return out + [""]
