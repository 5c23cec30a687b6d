"""Tables for one-factor sweeps: records grouped by the value of one config key (``meta_size``, ``epochs``,
``method_options.alpha``, ...), per noise and method.

The leaderboard keeps runs made under different protocols apart; a sweep is exactly such a set of protocols
that differ in one key, so it needs its own view. Per (value, method) over the seeds:

* last-epoch test accuracy: mean ± sample std, ``n`` and the 95% t-interval (failed runs counted apart);
* best-epoch accuracy, the optimistic convention;
* for methods that log weights, the filtering quality (AUROC of the weights for clean vs noisy samples at the
  last epoch), the mean noisy and clean weights at the last epoch and the post-filtering drift: how far the
  noisy mean weight rose from its lowest epoch to the last;
* cost: mean epoch time in seconds and relative to ``erm`` at the same value of the key (when erm was run).

Every other config key must be equal within a table; records that differ elsewhere go to separate tables.
Rendering is deterministic (fixed formats and orders), so the same records give the same bytes. Record text
(method labels with their option values, noise names, config values) goes through
:func:`~nlbench.benchmark.leaderboard.md_escape`, so no record can add rows, columns or headings.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from nlbench.benchmark import stats
from nlbench.benchmark.leaderboard import (
    BASELINE,
    as_float,
    fmt_mean_std,
    fmt_pct,
    md_escape,
    md_table,
    mean_epoch_time,
    method_label,
    noise_sort_key,
    protocol_of,
)
from nlbench.errors import NLBenchError

_MISSING = object()


def config_value(record: dict, key: str) -> Any:
    """The value of a dotted config key (``"meta_size"``, ``"method_options.alpha"``) in a record, or a
    sentinel when the record's config lacks it."""
    node: Any = record.get("config") or {}
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _without(protocol: dict, key: str) -> dict:
    out = json.loads(json.dumps(protocol, default=str))
    parts = key.split(".")
    node = out
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(parts[-1], None)
    return out


def _weights_summary(history: list) -> dict[str, float]:
    rows = [h for h in history if isinstance(h, dict) and "w_noisy_mean" in h]
    if not rows:
        return {"auroc": math.nan, "noisy_end": math.nan, "clean_end": math.nan, "drift": math.nan}
    noisy = [as_float(h.get("w_noisy_mean")) for h in rows]
    finite = [q for q in noisy if math.isfinite(q)]
    return {"auroc": as_float(rows[-1].get("w_auroc")), "noisy_end": noisy[-1],
            "clean_end": as_float(rows[-1].get("w_clean_mean")),
            "drift": noisy[-1] - min(finite) if finite and math.isfinite(noisy[-1]) else math.nan}


def _keys(records: list[dict]) -> list[str]:
    out: set[str] = set()
    for rec in records:
        for k, v in (rec.get("config") or {}).items():
            out.add(k)
            if isinstance(v, dict):
                out.update(f"{k}.{inner}" for inner in v)
    return sorted(out)


def sweep_runs(records: Iterable[dict], by: str) -> pd.DataFrame:
    """One row per record: ``table`` (id of the protocol without ``by``), ``value`` (of ``by``), ``noise``,
    ``value_key`` (its sort key: numbers in numeric order), ``method``, ``seed``, ``status``, accuracies, weight
    summaries and epoch time. Raises if no record has
    ``by`` in its config (with the valid keys and a close match)."""
    records = list(records)
    rows = []
    for rec in records:
        value = config_value(rec, by)
        if value is _MISSING:
            continue
        rest = _without(protocol_of(rec), by)
        ok = rec.get("status") == "ok"
        final = rec.get("final") or {}
        history = rec.get("history") or []
        rows.append({
            "table": hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:6],
            "protocol": json.dumps(rest, sort_keys=True), "value": value, "noise": rec["noise"],
            "method": method_label({**rec, "config": _without(rec.get("config") or {}, by)}),
            "seed": int(rec["seed"]), "status": rec.get("status"),
            "config_hash": rec.get("config_hash", ""),
            "last_acc": as_float(final.get("last_acc")) if ok else math.nan,
            "best_acc": as_float(final.get("best_acc")) if ok else math.nan,
            "epoch_time": mean_epoch_time(history) if ok else math.nan,
            **(_weights_summary(history) if ok else _weights_summary([])),
        })
    if not rows:
        keys = _keys(records)
        close = difflib.get_close_matches(by, keys, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise NLBenchError(f"no record has the config key {by!r}{hint}; valid: {', '.join(keys) or 'none'}")
    runs = pd.DataFrame(rows)
    runs["value_key"] = runs["value"].map(_value_key)
    runs = runs.sort_values(["table", "noise", "value_key", "method", "seed", "config_hash"], kind="stable")
    # two records of one (value, method, seed) can differ only in record options: keep one, the smaller hash
    runs = runs.drop_duplicates(["table", "noise", "value_key", "method", "seed"], keep="first")
    return runs.reset_index(drop=True)


def _value_key(value: Any) -> tuple:
    # numbers in numeric order, then anything else by its JSON text
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, json.dumps(value, sort_keys=True, default=str))


def sweep_cells(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (table, noise, value, method): ``n_runs``, ``n_failed``, ``n``, ``mean``, ``std``, ``lo``, ``hi``,
    ``best_acc``, the mean weight summaries, ``epoch_time`` and ``cost`` (epoch time / erm's at the same
    value, NaN without erm)."""
    cells = []
    for (table, noise, vkey, method), g in runs.groupby(["table", "noise", "value_key", "method"], sort=True):
        ok = g[g["status"] == "ok"]
        mean, std, n, lo, hi = stats.t_interval(ok["last_acc"].to_numpy(float))
        cells.append({"table": table, "noise": noise, "value": g["value"].iloc[0], "value_key": vkey,
                      "method": method,
                      "n_runs": len(g), "n_failed": int((g["status"] != "ok").sum()), "n": n, "mean": mean,
                      "std": std, "lo": lo, "hi": hi,
                      **{c: _nanmean(ok[c]) for c in ("best_acc", "auroc", "noisy_end", "clean_end", "drift",
                                                     "epoch_time")}})
    out = pd.DataFrame(cells)
    erm_time = {(r.table, r.noise, r.value_key): r.epoch_time for r in out.itertuples() if r.method == BASELINE}
    out["cost"] = [r.epoch_time / erm_time.get((r.table, r.noise, r.value_key), math.nan) for r in out.itertuples()]
    return out


def _nanmean(col: pd.Series) -> float:
    x = col.to_numpy(float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def _fmt(v: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(v) else f"{v:.{digits}f}"


def _fmt_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


def render_sweep(records: Iterable[dict], by: str, title: str | None = None) -> str:
    """Markdown tables of a sweep over the config key ``by`` (see the module docstring); one table per
    protocol and noise."""
    runs = sweep_runs(records, by)
    cells = sweep_cells(runs)
    out = [f"# {title or f'Sweep over `{by}`'}", "",
           f"Generated by `nlbench table --by {by}` from {len(runs)} records; do not edit. Last-epoch test "
           "accuracy (%) is the primary number: mean ± sample std over seeds, n and the 95% t-interval. Best "
           "epoch is the optimistic convention. Weight columns (methods that log weights): AUROC of the weights "
           "for clean vs noisy samples and the mean noisy/clean weight at the last epoch; *noisy rise* is the "
           "noisy mean weight at the last epoch minus its lowest epoch value (post-filtering drift). Cost: mean "
           f"epoch time, and relative to `{BASELINE}` at the same `{by}`.", ""]
    for table, tc in cells.groupby("table", sort=True):
        protocol = json.loads(runs.loc[runs["table"] == table, "protocol"].iloc[0])
        fixed = ", ".join(f"{k} `{md_escape(_fmt_value(protocol[k]))}`" for k in ("dataset", "model", "epochs",
                                                                                  "batch_size", "lr", "meta_size")
                          if k in protocol)
        seeds = sorted(set(runs.loc[runs["table"] == table, "seed"].tolist()))
        for noise in sorted(set(tc["noise"]), key=noise_sort_key):
            nc = tc[tc["noise"] == noise]
            out += [f"## `{md_escape(noise)}` — {fixed} (protocol {table})", "",
                    f"Seeds: {', '.join(str(s) for s in seeds)}.", ""]
            rows = []
            for r in nc.itertuples():
                ci = "—" if not math.isfinite(r.lo) else f"[{fmt_pct(r.lo)}, {fmt_pct(r.hi)}]"
                n = f"{r.n}" + (f" ({r.n_failed} failed)" if r.n_failed else "")
                rows.append([md_escape(_fmt_value(r.value)), md_escape(r.method), n, fmt_mean_std(r.mean, r.std), ci,
                             fmt_pct(r.best_acc), _fmt(r.auroc), _fmt(r.noisy_end), _fmt(r.drift), _fmt(r.clean_end),
                             _fmt(r.epoch_time, 1), _fmt(r.cost, 2)])
            out += md_table([f"`{md_escape(by)}`", "method", "n", "last epoch", "95% CI", "best epoch (optimistic)",
                           "weight AUROC", "noisy w", "noisy rise", "clean w", "epoch s", f"cost × {BASELINE}"],
                          rows, right_from=2)
            out.append("")
    return "\n".join(out)
