"""The Python API that ``nlbench`` exports (see the README, "Python API"): records as a DataFrame and the
registries' names. ``import nlbench`` stays cheap: these load on first use."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nlbench.errors import NLBenchError

if TYPE_CHECKING:
    import pandas as pd

#: Record fraction -> column in percent (the unit is in the name).
_PCT = {"last_acc": "last_acc_pct", "best_acc": "best_acc_pct", "last5_acc": "tail_mean_acc_pct"}
#: How many final epochs ``final.last5_acc`` averages at most (the harness's rule: the last 5, or all of them).
TAIL_EPOCHS = 5
#: The leading columns of :func:`load_records`, in order; ``config.*`` columns follow.
COLUMNS = ("run_name", "method", "noise", "dataset", "model", "seed", "noise_seed", "status", "oracle",
           "uses_noise_rate", "uses_meta", "last_acc_pct", "best_acc_pct", "best_epoch", "tail_mean_acc_pct",
           "tail_epochs", "epochs_done", "realised_noise_pct", "nominal_noise_pct", "val_realised_noise_pct",
           "w_auroc_last", "w_clean_mean_last", "w_noisy_mean_last", "epoch_time_s", "wall_time_s", "n_pool",
           "n_meta", "n_val", "n_test", "n_train", "error", "config_hash", "created", "path")


def _num(value: Any, scale: float = 1.0) -> float:
    """A record number (``None`` for NaN/inf) as a float, scaled; NaN when absent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value) * scale


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            _flatten(f"{prefix}.{k}", value[k], out)
    else:
        out[prefix] = tuple(value) if isinstance(value, list) else value


def record_row(rec: dict) -> dict[str, Any]:
    """One record as a flat row (see :func:`load_records` for the columns)."""
    from nlbench.noise import nominal_rate

    final = rec.get("final") or {}
    report = rec.get("noise_report") or {}
    history = rec.get("history") or []
    last = history[-1] if history else {}
    has_matrix = report.get("nominal_transition_matrix") or report.get("transition_matrix")
    nominal = 100 * nominal_rate(report) if has_matrix else math.nan
    done = final.get("epochs_done", len(history))
    times = [_num(h.get("epoch_time_s")) for h in history]
    sizes = rec.get("sizes") or {}
    row: dict[str, Any] = {
        "run_name": rec.get("run_name"), "method": rec.get("method"), "noise": rec.get("noise"),
        "dataset": rec.get("dataset"), "model": rec.get("model"), "seed": rec.get("seed"),
        "noise_seed": rec.get("noise_seed"), "status": rec.get("status"), "oracle": bool(rec.get("oracle")),
        "uses_noise_rate": bool(rec.get("uses_noise_rate")), "uses_meta": bool(rec.get("uses_meta")),
        **{col: _num(final.get(key), 100) for key, col in _PCT.items()},
        "best_epoch": final.get("best_epoch"), "tail_epochs": min(TAIL_EPOCHS, done) if done else None,
        "epochs_done": done,
        "realised_noise_pct": _num(report.get("realised_rate"), 100), "nominal_noise_pct": nominal,
        "val_realised_noise_pct": _num((rec.get("val_noise_report") or {}).get("realised_rate"), 100),
        "w_auroc_last": _num(last.get("w_auroc")), "w_clean_mean_last": _num(last.get("w_clean_mean")),
        "w_noisy_mean_last": _num(last.get("w_noisy_mean")),
        "epoch_time_s": sum(times) / len(times) if times else math.nan, "wall_time_s": _num(rec.get("wall_time_s")),
        **{f"n_{k}": sizes.get(k) for k in ("pool", "meta", "val", "test", "train")},
        "error": (rec.get("error") or {}).get("reason"), "config_hash": rec.get("config_hash"),
        "created": rec.get("created"), "path": rec.get("_path") or rec.get("path"),
    }
    _flatten("config", rec.get("config") or {}, row)
    return row


def load_records(results_dir: str | os.PathLike = "results") -> pd.DataFrame:
    """Every valid run record under ``results_dir/runs/`` as a :class:`pandas.DataFrame`, one row per run.

    Accuracies and noise rates are in **percent**, with the unit in the column name:

    - what ran: ``run_name``, ``method``, ``noise``, ``dataset``, ``model``, ``seed``, ``noise_seed``,
      ``status`` (``ok`` or ``failed``; a failed run's accuracies are NaN and ``error`` says why), and the flags
      ``oracle`` (reads ground truth), ``uses_noise_rate`` (reads the nominal noise rate), ``uses_meta``;
    - final metrics: ``last_acc_pct`` (test accuracy at the last epoch, the primary metric), ``best_acc_pct``
      and ``best_epoch`` (best epoch by test accuracy: optimistic), ``tail_mean_acc_pct`` (mean test accuracy
      of the last ``tail_epochs`` epochs: 5, or all of them in shorter runs), ``epochs_done``;
    - noise: ``realised_noise_pct`` (share of wrong labels in the noisy pool), ``nominal_noise_pct``
      (``1 - mean diag T``), ``val_realised_noise_pct`` (NaN without a validation split);
    - weights at the last epoch (NaN for methods that do not reweight): ``w_auroc_last``,
      ``w_clean_mean_last``, ``w_noisy_mean_last``;
    - cost and sizes: ``epoch_time_s`` (mean), ``wall_time_s``, ``n_pool``, ``n_meta``, ``n_val``, ``n_test``,
      ``n_train``; and ``config_hash``, ``created``, ``path``;
    - the full config, flattened: ``config.lr``, ``config.epochs``, ``config.method_options.alpha``, ...

    Files that are not valid records (unreadable, schema-breaking, duplicates) are skipped with one
    :class:`UserWarning` each; ``nlbench results check`` lists them. A missing folder raises
    :class:`~nlbench.errors.NLBenchError`.
    """
    import pandas as pd

    from nlbench.benchmark.records import scan_records

    if not Path(results_dir).is_dir():
        raise NLBenchError(f"results folder {results_dir} does not exist")
    records, problems = scan_records(results_dir)
    for p in problems:
        warnings.warn(f"skipped {p.path}: {p.problem}", UserWarning, stacklevel=2)
    rows = [record_row(r) for r in records]
    config_cols = sorted({k for row in rows for k in row if k.startswith("config.")})
    return pd.DataFrame(rows, columns=[*COLUMNS, *config_cols])


#: First characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) read a cell as a formula or
#: command: OWASP's list for CSV injection.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_safe_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``)
    gets a leading ``'``, which spreadsheets show as text, the way OWASP recommends; numbers, booleans and
    missing values are unchanged (a negative number is a number, not a formula)."""
    if isinstance(value, str) and value.lstrip(" ").startswith(FORMULA_START):
        return "'" + value
    return value


def records_csv(df: pd.DataFrame) -> str:
    """``df`` (:func:`load_records`) as CSV text whose text cells (and column names) cannot run as formulas
    in a spreadsheet (:func:`csv_safe_cell`): what ``nlbench results export`` writes."""
    safe = df.copy()
    for col in safe.columns:
        if safe[col].dtype == object or str(safe[col].dtype) in ("string", "str"):
            safe[col] = safe[col].map(csv_safe_cell)
    safe.columns = [csv_safe_cell(str(c)) for c in safe.columns]
    return safe.to_csv(index=False)


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names, plugins included (``nlbench list methods``)."""
    from nlbench.methods import list_methods as _list

    return _list(pattern)


def list_noises() -> list[str]:
    """Noise kinds; those that take a rate in percent are listed as ``kindNN`` (``sym40`` is a spec)."""
    from nlbench.noise import list_noises as _list

    return _list()


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names."""
    from nlbench.datasets import list_datasets as _list

    return _list(pattern)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model (backbone) names."""
    from nlbench.models import list_models as _list

    return _list(pattern)


def list_presets(pattern: str = "*") -> list[str]:
    """Named protocols for ``RunConfig.from_preset`` / ``--preset``."""
    from nlbench.benchmark.config import PRESETS

    return PRESETS.list(pattern)


__all__ = ["COLUMNS", "list_datasets", "list_methods", "list_models", "list_noises", "list_presets", "load_records",
           "record_row"]
