"""Sweep tables (``nlbench table --by KEY``) on hand-made records: grouping, statistics against scipy, cost,
drift, separate protocols, determinism and the CLI's errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.records import write_record
from nlbench.benchmark.sweep import render_sweep, sweep_cells, sweep_runs
from nlbench.cli import app

# last-epoch accuracy per (meta_size, method) for seeds 0, 1, 2
ACC = {100: {"erm": [0.70, 0.72, 0.71], "surrogate": [0.74, 0.77, 0.73]},
       250: {"erm": [0.71, 0.72, 0.70], "surrogate": [0.80, 0.79, 0.82]},
       1000: {"erm": [0.72, 0.71, 0.73], "surrogate": [0.85, 0.86, 0.84]}}
TIME = {"erm": 2.0, "surrogate": 3.0}
NOISY_W = [0.6, 0.2, 0.35]  # per epoch: lowest at epoch 2, so the rise after it is 0.15


def make_record(method: str, meta_size: int, seed: int, acc: float, *, epoch_time: float = 1.0,
                epochs: int = 3, lr: float = 0.05) -> dict:
    cfg = RunConfig(method=method, noise="pairflip45", dataset="synthetic", seed=seed, epochs=epochs,
                    meta_size=meta_size, lr=lr)
    weights = method != "erm"
    history = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "test_acc": acc + (0.01 if e == 1 else 0.0), "epoch_time_s": epoch_time,
             "train_loss": 1.0, "lr": lr, "val_acc": None}
        if weights:
            h.update(w_clean_mean=0.9, w_noisy_mean=NOISY_W[e - 1], w_auroc=0.8 + 0.01 * e)
        history.append(h)
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": method,
            "noise": "pairflip45", "dataset": "synthetic", "model": cfg.model, "seed": seed, "noise_seed": seed,
            "status": "ok", "oracle": False, "config": cfg.to_dict(), "env": {},
            "noise_report": {"realised_rate": 0.45}, "history": history,
            "final": {"last_acc": acc, "best_acc": acc + 0.01, "best_epoch": 1, "last5_acc": acc,
                      "epochs_done": epochs}, "wall_time_s": 1.0}


def all_records() -> list[dict]:
    return [make_record(m, size, s, a, epoch_time=TIME[m] * (1 + size / 1000))
            for size, by_m in ACC.items() for m, accs in by_m.items() for s, a in enumerate(accs)]


def test_cells_match_scipy_in_numeric_order():
    cells = sweep_cells(sweep_runs(all_records(), "meta_size"))
    assert list(cells["value"]) == [100, 100, 250, 250, 1000, 1000]  # numeric, not string, order
    for r in cells.itertuples():
        x = np.array(ACC[r.value][r.method])
        lo, hi = st.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=st.sem(x))
        assert r.n == 3 and r.mean == pytest.approx(x.mean()) and r.std == pytest.approx(x.std(ddof=1))
        assert (r.lo, r.hi) == (pytest.approx(lo), pytest.approx(hi))
        assert r.best_acc == pytest.approx(x.mean() + 0.01)


def test_cost_is_relative_to_erm_at_the_same_value_and_drift_is_rise_after_min():
    cells = sweep_cells(sweep_runs(all_records(), "meta_size"))
    sur = cells[cells["method"] == "surrogate"].set_index("value")
    assert sur.loc[250, "cost"] == pytest.approx(1.5)
    assert sur.loc[1000, "epoch_time"] == pytest.approx(6.0)
    assert sur.loc[100, "drift"] == pytest.approx(0.15)
    assert sur.loc[100, "noisy_end"] == pytest.approx(0.35) and sur.loc[100, "auroc"] == pytest.approx(0.83)
    erm = cells[cells["method"] == "erm"]
    assert erm["auroc"].isna().all() and (erm["cost"] == 1.0).all()
    # without erm there is no cost
    no_erm = sweep_cells(sweep_runs([r for r in all_records() if r["method"] != "erm"], "meta_size"))
    assert no_erm["cost"].isna().all()


def test_other_protocol_differences_make_separate_tables():
    recs = all_records() + [make_record("surrogate", 100, s, 0.5, lr=0.1) for s in range(3)]
    runs = sweep_runs(recs, "meta_size")
    assert runs["table"].nunique() == 2
    text = render_sweep(recs, "meta_size")
    assert text.count("## `pairflip45`") == 2


def test_rendered_table_and_determinism():
    recs = all_records()
    text = render_sweep(recs, "meta_size", title="Meta size")
    shuffled = list(recs)
    random.Random(0).shuffle(shuffled)
    assert render_sweep(shuffled, "meta_size", title="Meta size") == text
    assert text.startswith("# Meta size\n")
    x = np.array(ACC[250]["surrogate"])
    row = next(line for line in text.splitlines() if line.startswith("| 250 | surrogate"))
    assert f"{100 * x.mean():.2f} ± {100 * x.std(ddof=1):.2f}" in row and "| 1.50 |" in row


def test_dotted_keys():
    recs = [make_record("surrogate", 100, s, 0.7) for s in range(2)]
    for i, r in enumerate(recs):
        r["config"]["method_options"] = {"alpha": 0.1 * (i + 1)}
    for r in recs:
        r["config"]["method_options"]["mode"] = "direct"
    runs = sweep_runs(recs, "method_options.alpha")
    assert sorted(runs["value"]) == pytest.approx([0.1, 0.2])
    # the swept option is the row's value, not part of the method's name; the other options stay in it
    assert set(runs["method"]) == {'surrogate[mode="direct"]'}


def test_cli_writes_the_table_and_reports_unknown_keys(tmp_path):
    for rec in all_records():
        write_record(tmp_path / "results", rec)
    runner = CliRunner()
    out = tmp_path / "sweep.md"
    res = runner.invoke(app, ["table", "--by", "meta_size", "--results-dir", str(tmp_path / "results"),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == render_sweep(all_records(), "meta_size")
    res = runner.invoke(app, ["table", "--by", "meta_sz", "--results-dir", str(tmp_path / "results")])
    assert res.exit_code == 2
    assert "did you mean 'meta_size'" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
