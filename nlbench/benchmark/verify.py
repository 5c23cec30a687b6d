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

Two kinds of record are not rerun, each said on its own line: a record made by an older version of its method
(:func:`stale_line`: its computation has changed on purpose, so a rerun would differ and prove nothing), and one
whose config asks for more epochs than the rerun limit (:func:`refusal`). Stale records also stay out of the
seed spread of their cell.

A record made in portable mode (``env.portable``, see :mod:`nlbench.portable`) pinned its CPU kernels to one
instruction set, so its rerun (:func:`rerun`, in portable mode too) is expected bit for bit on any x86-64 CPU
with AVX2 at the same thread count; a record made with the machine's native kernels is expected bit for bit
only on a CPU of the same kind. Each verdict line says which, and the numerics that differ.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from nlbench.errors import NLBenchError

#: keys of an epoch entry that are timings, not results
TIMING_KEYS = frozenset({"epoch_time_s"})
#: env keys that decide the numerics (see the module docstring)
NUMERICS_ENV = ("portable", "cpu_model", "cpu_capability", "blas", "onednn", "mkl", "torch", "device",
                "device_name", "threads")
#: Most epochs ``results verify`` reruns for one record unless told otherwise (a record may ask for 10,000).
MAX_RERUN_EPOCHS = 200
#: Torch thread counts a record's ``env.threads`` may ask a rerun for.
MAX_THREADS = 1024


@dataclass
class Verdict:
    run_name: str
    verdict: str  # identical | within | outside
    last_acc: float | None
    rerun_last_acc: float | None
    spread: float | None
    first_diff_epoch: int | None
    env_diff: dict[str, tuple[Any, Any]]
    #: whether the record was made in portable mode (``env.portable``)
    portable: bool = False

    def line(self) -> str:
        def pct(x: float | None) -> str:
            return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"

        what = {"identical": "bit-identical", "within": "different, within the seed spread",
                "outside": "different, OUTSIDE the seed spread"}[self.verdict]
        detail = "" if self.verdict == "identical" else (
            f" (last acc {pct(self.last_acc)} -> {pct(self.rerun_last_acc)}, seed spread {pct(self.spread)}, "
            f"first differs at epoch {self.first_diff_epoch})")
        env = "" if not self.env_diff else " [numerics differ: " + ", ".join(
            f"{_plain(k)} {_plain(a)} -> {_plain(b)}" for k, (a, b) in sorted(self.env_diff.items())) + "]"
        return f"{_plain(self.run_name)}: {what}{detail}{MODE_TAGS[self.portable]}{env}"


#: What each verdict line says about the numerics a record was made with (``env.portable``).
MODE_TAGS = {True: " [portable numerics]", False: " [native numerics: bit-identical only on the same CPU kind]"}


def made_portable(record: dict) -> bool:
    """Whether ``record`` was made in portable numerics (its ``env.portable`` is true)."""
    env = record.get("env")
    return isinstance(env, dict) and env.get("portable") is True


def mode_tag(record: dict) -> str:
    """`` [portable numerics]`` or `` [native numerics: ...]``: how ``record`` was made, for its line."""
    return MODE_TAGS[made_portable(record)]


def stale_reason(record: dict) -> str | None:
    """``made by <method> version 1, now 2: its computation has changed`` for a record made by an older version
    of its method (:func:`nlbench.benchmark.records.is_stale`); ``None`` if the record is current."""
    from nlbench.benchmark.records import current_method_version, is_stale

    if not is_stale(record):
        return None
    method = str(record.get("method"))
    return (f"made by {_plain(method)} version {_plain(record.get('method_version', 1))}, now "
            f"{current_method_version(method)}: its computation has changed")


def stale_line(record: dict) -> str | None:
    """The verify line of a stale record (:func:`stale_reason`: a rerun would differ by design and prove
    nothing, so it is not rerun); ``None`` if the record is current."""
    why = stale_reason(record)
    return None if why is None else f"{_plain(record['run_name'])}: stale, {why}; not rerun{mode_tag(record)}"


def _plain(v: Any, limit: int = 80) -> str:
    """A record's value for one terminal line: no control characters, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else "?" for c in str(v))
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    # a record made before a field existed does not differ in it (no `portable` before portable mode: native)
    before = {"portable": False}
    pairs = {k: (record["env"].get(k, before.get(k)), rerun["env"].get(k, before.get(k))) for k in NUMERICS_ENV}
    env_diff = {k: (a, b) for k, (a, b) in pairs.items() if a != b}
    if diff is None and record["status"] == rerun["status"]:
        verdict = "identical"
    elif (record["status"] == rerun["status"] == "ok" and spread is not None and last is not None
          and new is not None and abs(new - last) <= spread):
        verdict = "within"
    else:
        verdict = "outside"
    return Verdict(record["run_name"], verdict, last, new, spread, diff, env_diff, portable=made_portable(record))


def record_threads(record: dict) -> int | None:
    """The torch thread count a record was made with, if it states a sane one (an integer in
    [1, :data:`MAX_THREADS`]); ``None`` otherwise (the rerun keeps the current count)."""
    t = record["env"].get("threads")
    return t if isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= MAX_THREADS else None


def refusal(record: dict, max_epochs: int = MAX_RERUN_EPOCHS) -> str | None:
    """Why ``record`` is not rerun (its config asks for more than ``max_epochs`` epochs), else ``None``."""
    epochs = record["config"].get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs > max_epochs:
        return (f"{_plain(record['run_name'])}: skipped, its config asks for {_plain(epochs)} epochs, over the "
                f"{max_epochs} a verify reruns (raise the limit with --max-epochs to rerun it){mode_tag(record)}")
    return None


def unrunnable(record: dict) -> str | None:
    """Why ``record``'s config cannot be trained by this nlbench (an unknown method, noise, model or dataset, an
    option its method no longer takes, ...: the record, not the user, is at fault), else ``None``. Checked in this
    process, before a fresh one is started for the rerun."""
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import canonical_config
    from nlbench.datasets import DATASETS

    try:
        cfg = canonical_config(RunConfig.from_dict(record["config"]))
        if cfg.dataset not in DATASETS:
            DATASETS.get(cfg.dataset)  # raises the registry's "unknown dataset ... Did you mean" error
    except NLBenchError as e:
        return f"{_plain(record['run_name'])}: cannot be rerun: {_plain(str(e).splitlines()[0], 300)}"
    return None


def rerun(record: dict, *, data_root: str | os.PathLike | None = None, device: str = "cpu",
          timeout: float | None = None) -> dict:
    """Train ``record``'s config again, in a fresh process whose numerics match the record's: portable mode
    when the record was made in it (the pins must be set before torch loads, so never in this process), the
    machine's native kernels otherwise, and the record's thread count (:func:`record_threads`). Returns the
    rerun's record (nothing is written); raises :class:`NLBenchError` with the rerun's last error line."""
    from nlbench import portable

    env = {k: v for k, v in os.environ.items() if k != portable.ENV_FLAG and k not in portable.PINS}
    if record["env"].get("portable") is True:
        env[portable.ENV_FLAG] = "1"
    payload = {"config": record["config"], "data_root": None if data_root is None else str(data_root),
               "device": device, "threads": record_threads(record)}
    try:
        proc = subprocess.run([sys.executable, "-m", "nlbench.benchmark.verify"], input=json.dumps(payload),
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NLBenchError(f"rerun of {_plain(record['run_name'])} took over {timeout} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise NLBenchError(f"rerun of {_plain(record['run_name'])} failed: "
                           f"{_plain(lines[-1] if lines else proc.returncode, 300)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:  # the record is the last line: anything a library wrote to stdout before it is not
        out = json.loads(lines[-1]) if lines else None
    except ValueError:
        out = None
    if not isinstance(out, dict) or not isinstance(out.get("history"), list):
        raise NLBenchError(f"rerun of {_plain(record['run_name'])} printed no record")
    return out


def _rerun_main() -> None:
    """``python -m nlbench.benchmark.verify``: read a :func:`rerun` payload on stdin, train it, print the record
    as JSON on stdout (progress and warnings go to stderr)."""
    import contextlib

    import torch

    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train

    payload = json.loads(sys.stdin.read())
    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            rec = train(RunConfig.from_dict(payload["config"]), data_root=payload.get("data_root"),
                        device=payload.get("device", "cpu"), results_dir=None, checkpoint_every=None)
    except NLBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(rec, default=str))


def sample(records: list[dict], k: int, seed: int) -> list[dict]:
    """``k`` records drawn without replacement by ``numpy.random.default_rng(seed)``, in file-name order."""
    if k >= len(records):
        return list(records)
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=k, replace=False))
    return [records[i] for i in idx]


def summary_line(verdicts: list[Verdict], skipped: int = 0, stale: int = 0, unrunnable: int = 0) -> str:
    """The last line of ``results verify``: the verdicts counted, then the records not rerun (``skipped``: over
    the epoch limit; ``stale``: made by an older method version; ``unrunnable``: a config this nlbench cannot
    train), when there are any."""
    counts = {v: sum(x.verdict == v for x in verdicts) for v in ("identical", "within", "outside")}
    line = (f"{len(verdicts)} rerun: {counts['identical']} bit-identical, {counts['within']} within the seed "
            f"spread of their cell, {counts['outside']} outside it")
    portable = sum(v.portable for v in verdicts)
    if verdicts:
        line += f" ({portable} made in portable numerics, {len(verdicts) - portable} native)"
    if skipped:
        line += f"; {skipped} skipped over the epoch limit"
    if stale:
        line += f"; {stale} stale (older method version), not rerun"
    if unrunnable:
        line += f"; {unrunnable} cannot be rerun"
    return line


if __name__ == "__main__":
    _rerun_main()
