"""Test helpers for method authors: the same checks nlbench runs on its built-in methods.

In a plugin package's tests (pytest or anything else; failures raise ``AssertionError``)::

    from nlbench.testing import check_method

    def test_my_method_trains():
        check_method("my-method")                                  # options: check_method("my-method", q=0.5)
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

#: Per-epoch telemetry a reweighting method's records carry (and a plain method's must not).
TELEMETRY = frozenset({"w_clean_mean", "w_noisy_mean", "w_auroc", "w_noisy_below_0.1", "w_seen"})


def tiny_config(method: str, **overrides: Any):
    """The built-in methods' test setting (``tests/test_methods_all.py``): 2 epochs of the synthetic Gaussian
    mixture, 400 samples (meta set 40, noisy validation split 40, sym40 noise), batch 64, 100 test samples."""
    from nlbench.benchmark.config import RunConfig

    base: dict[str, Any] = dict(noise="sym40", dataset="synthetic", epochs=2, meta_size=40, val_size=40,
                                batch_size=64, dataset_options={"n_train": 400, "n_test": 100})
    return RunConfig(method=method, **{**base, **overrides})


def _check(condition: bool, message: str) -> None:
    if not condition:  # explicit, so the checks also hold under python -O
        raise AssertionError(message)


def check_method(name: str, *, config: dict[str, Any] | None = None, **options: Any) -> dict:
    """Train method ``name`` (with method ``options``) for 2 epochs on tiny synthetic data on the CPU, as
    nlbench's own tests do for every built-in method, and check the result; return the record.

    Checked: the run finishes with status ``ok`` under the method's canonical name; the record is written,
    reads back and passes the record schema; every epoch has a finite training loss and test and validation
    accuracies in [0, 1]; reweighting methods (``reweights = True``) record weight telemetry with mean weights
    in [0, 1] and other methods none; the ``oracle`` flag is the class's. ``config`` overrides fields of the
    test setting (:func:`tiny_config`), e.g. ``config={"epochs": 3}``. A few seconds on one CPU core.
    """
    from nlbench.benchmark.harness import train
    from nlbench.benchmark.records import load_record
    from nlbench.methods import get_method

    cls = get_method(name)
    cfg = tiny_config(name, method_options=dict(options), **(config or {}))
    with tempfile.TemporaryDirectory(prefix="nlbench-check-") as tmp:
        record = train(cfg, device="cpu", results_dir=tmp, progress=False, resume=False)
        path = Path(record["path"])
        _check(path.is_file(), f"{name}: no record written at {path}")
        try:
            load_record(path)
        except ValueError as e:
            raise AssertionError(f"{name}: its record breaks the schema: {e}") from None
    _check(record["status"] == "ok", f"{name}: run failed: {record.get('error')}")
    _check(record["method"] == cls.name, f"{name}: recorded as {record['method']!r}, not {cls.name!r}")
    _check(record["oracle"] is cls.oracle, f"{name}: oracle flag {record['oracle']} is not the class's {cls.oracle}")
    epochs = [h["epoch"] for h in record["history"]]
    _check(epochs == list(range(1, cfg.epochs + 1)), f"{name}: history has epochs {epochs}")
    for h in record["history"]:
        e = h["epoch"]
        _check(math.isfinite(h["train_loss"]), f"{name}: non-finite training loss {h['train_loss']} in epoch {e}")
        for key in ("test_acc", "val_acc"):
            _check(math.isfinite(h[key]) and 0 <= h[key] <= 1, f"{name}: {key} = {h[key]} in epoch {e}")
        if cls.reweights:
            missing = TELEMETRY - set(h)
            _check(not missing, f"{name}: reweights = True but epoch {e} lacks {sorted(missing)}")
            for key in ("w_clean_mean", "w_noisy_mean"):
                _check(0 <= h[key] <= 1, f"{name}: {key} = {h[key]} outside [0, 1] in epoch {e}")
        else:
            extra = TELEMETRY & set(h)
            _check(not extra, f"{name}: reweights = False but epoch {e} has weight telemetry {sorted(extra)}")
    _check(record["final"]["epochs_done"] == cfg.epochs, f"{name}: {record['final']['epochs_done']} epochs done")
    return record


__all__ = ["TELEMETRY", "check_method", "tiny_config"]
