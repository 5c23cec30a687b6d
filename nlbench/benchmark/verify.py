"""Rerun committed records and say how closely they reproduce (``nlbench results verify``).

Determinism in nlbench holds on the same machine with the same torch thread count: the seeds fix every random
stream, but a different CPU (ISA, BLAS, oneDNN) or thread count changes the order of floating-point reductions,
and a network trained for many steps amplifies the last-bit differences. So a rerun is classified against what
the benchmark's statistics can absorb:

- ``identical``: every epoch's metrics equal the record's, bit for bit (epoch times aside);
- ``within``: the history differs, but the final accuracy moved by no more than the spread (max - min) of the
  final accuracies of the other seeds of the record's cell (same config but the seed), i.e. less than the
  seeds already vary;
- ``outside``: it moved by more; or the run's status changed (a diverged run now finishes, or the reverse).

A cell with fewer than two other seeds has no spread: any difference is ``outside``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: keys of an epoch entry that are timings, not results
TIMING_KEYS = frozenset({"epoch_time_s"})
#: env keys that decide the numerics (see the module docstring)
NUMERICS_ENV = ("cpu_model", "cpu_capability", "blas", "onednn", "mkl", "torch", "device", "device_name",
                "threads")


@dataclass
class Verdict:
    run_name: str
    verdict: str  # identical | within | outside
    last_acc: float | None
    rerun_last_acc: float | None
    spread: float | None
    first_diff_epoch: int | None
    env_diff: dict[str, tuple[Any, Any]]

    def line(self) -> str:
        def pct(x: float | None) -> str:
            return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"

        what = {"identical": "bit-identical", "within": "different, within the seed spread",
                "outside": "different, OUTSIDE the seed spread"}[self.verdict]
        detail = "" if self.verdict == "identical" else (
            f" (last acc {pct(self.last_acc)} -> {pct(self.rerun_last_acc)}, seed spread {pct(self.spread)}, "
            f"first differs at epoch {self.first_diff_epoch})")
        env = "" if not self.env_diff else " [numerics differ: " + ", ".join(
            f"{k} {a} -> {b}" for k, (a, b) in sorted(self.env_diff.items())) + "]"
        return f"{self.run_name}: {what}{detail}{env}"


def results_of(history: list[dict]) -> list[dict]:
    """The epochs' results as a record stores them (timings dropped; NaN and inf are null in JSON)."""
    def stored(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return [{k: stored(v) for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def first_difference(a: list[dict], b: list[dict]) -> int | None:
    """The first epoch (from 1) whose results differ, ``None`` if the histories are equal."""
    ra, rb = results_of(a), results_of(b)
    for i, (x, y) in enumerate(zip(ra, rb, strict=False)):
        if x != y:
            return i + 1
    return None if len(ra) == len(rb) else min(len(ra), len(rb)) + 1


def cell_key(record: dict) -> str:
    """The record's config without its seeds: the runs whose spread a rerun is judged against."""
    import json

    cfg = {k: v for k, v in record["config"].items() if k not in ("seed", "noise_seed")}
    return json.dumps(cfg, sort_keys=True, default=str)


def seed_spread(record: dict, records: list[dict]) -> float | None:
    """max - min of the final accuracy over the OTHER finished records of ``record``'s cell (the record under
    test does not widen its own yardstick); None with fewer than two of them."""
    key = cell_key(record)
    accs = [r["final"]["last_acc"] for r in records if r["status"] == "ok" and r.get("final")
            and r["run_name"] != record["run_name"] and cell_key(r) == key]
    return float(max(accs) - min(accs)) if len(accs) >= 2 else None


def classify(record: dict, rerun: dict, spread: float | None) -> Verdict:
    diff = first_difference(record["history"], rerun["history"])
    last = (record.get("final") or {}).get("last_acc")
    new = (rerun.get("final") or {}).get("last_acc")
    env_diff = {k: (record["env"].get(k), rerun["env"].get(k)) for k in NUMERICS_ENV
                if record["env"].get(k) != rerun["env"].get(k)}
    if diff is None and record["status"] == rerun["status"]:
        verdict = "identical"
    elif (record["status"] == rerun["status"] == "ok" and spread is not None and last is not None
          and new is not None and abs(new - last) <= spread):
        verdict = "within"
    else:
        verdict = "outside"
    return Verdict(record["run_name"], verdict, last, new, spread, diff, env_diff)


def sample(records: list[dict], k: int, seed: int) -> list[dict]:
    """``k`` records drawn without replacement by ``numpy.random.default_rng(seed)``, in file-name order."""
    if k >= len(records):
        return list(records)
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=k, replace=False))
    return [records[i] for i in idx]


def summary_line(verdicts: list[Verdict]) -> str:
    counts = {v: sum(x.verdict == v for x in verdicts) for v in ("identical", "within", "outside")}
    return (f"{len(verdicts)} rerun: {counts['identical']} bit-identical, {counts['within']} within the seed "
            f"spread of their cell, {counts['outside']} outside it")
