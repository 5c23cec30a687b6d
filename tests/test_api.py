"""The Python API exported by ``nlbench``: cheap import, load_records in percent with flags and the flattened
config, the registries' lists, and ``nlbench results export --csv``."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import nlbench
from nlbench.benchmark import harness
from nlbench.benchmark.config import PRESETS, RunConfig
from nlbench.benchmark.records import write_record
from nlbench.cli import app
from nlbench.errors import NLBenchError


def tiny(method: str, noise: str = "sym40", **kw) -> RunConfig:
    base = dict(noise=noise, dataset="synthetic", epochs=2, meta_size=40, batch_size=64,
                dataset_options={"n_train": 300, "n_test": 100})
    return RunConfig(method=method, **{**base, **kw})


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    recs = [nlbench.train(tiny(m), results_dir=folder, device="cpu") for m in ("erm", "oracle", "surrogate")]
    # --lr is at most 10: far-apart classes (inputs of norm ~1000) make the loss overflow
    diverged = nlbench.train(tiny("erm", lr=10, schedule="constant", epochs=1,
                                  dataset_options={"n_train": 300, "n_test": 100, "separation": 1000}),
                             results_dir=folder, device="cpu")
    assert diverged["status"] == "failed"
    return folder, {r["method"] if r["status"] == "ok" else "failed": r for r in [*recs, diverged]}


def test_import_is_cheap_and_lazy():
    code = ("import sys, nlbench; heavy = [m for m in ('torch', 'pandas', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy; nlbench.RunConfig; assert 'torch' not in sys.modules; "
            "assert callable(nlbench.load_records) and 'pandas' not in sys.modules; print(sorted(nlbench.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nlbench.nope  # noqa: B018


def test_exports_are_the_real_objects():
    assert nlbench.train is harness.train and nlbench.RunConfig is RunConfig
    assert nlbench.NLBenchError is NLBenchError
    assert {"erm", "surrogate", "oracle"} <= set(nlbench.list_methods())
    assert {"symNN", "pairflipNN", "clean"} <= set(nlbench.list_noises())
    assert "synthetic" in nlbench.list_datasets() and "lenet" in nlbench.list_models()
    assert nlbench.list_presets() == PRESETS.list() and "fmnist" in nlbench.list_presets()
    assert {"load_records", "train", "RunConfig", "list_methods"} <= set(dir(nlbench))


def test_load_records_one_row_per_run_in_percent(results):
    folder, recs = results
    df = nlbench.load_records(folder)
    assert isinstance(df, pd.DataFrame) and len(df) == 4
    assert list(df["run_name"]) == sorted(r["run_name"] for r in recs.values())
    rows = {(r.method if r.status == "ok" else "failed"): r for r in df.itertuples(index=False)}
    for key, rec in recs.items():
        row = df[df["run_name"] == rec["run_name"]].iloc[0]
        assert (row["method"], row["noise"], row["seed"], row["status"]) == (rec["method"], rec["noise"],
                                                                              rec["seed"], rec["status"])
        assert row["config.lr"] == rec["config"]["lr"] and row["config.epochs"] == rec["config"]["epochs"]
        assert row["config.dataset_options.n_train"] == 300
        if key != "failed":
            assert row["last_acc_pct"] == pytest.approx(100 * rec["final"]["last_acc"])
            assert row["best_acc_pct"] == pytest.approx(100 * rec["final"]["best_acc"])
            assert row["tail_mean_acc_pct"] == pytest.approx(100 * rec["final"]["last5_acc"])
            assert row["tail_epochs"] == 2 and row["epochs_done"] == 2
            assert row["realised_noise_pct"] == pytest.approx(100 * rec["noise_report"]["realised_rate"])
            assert row["realised_noise_pct"] == pytest.approx(40.0, abs=1)
            assert row["nominal_noise_pct"] == pytest.approx(40.0)
    assert rows["oracle"].oracle and not rows["erm"].oracle
    assert rows["surrogate"].uses_meta and not rows["erm"].uses_meta
    assert not df["uses_noise_rate"].any()
    assert 0 <= rows["surrogate"].w_auroc_last <= 1 and math.isnan(rows["erm"].w_auroc_last)
    failed = rows["failed"]
    assert math.isnan(failed.last_acc_pct) and "non-finite" in failed.error
    assert {"method", "noise", "seed", "status", "oracle", "uses_noise_rate", "last_acc_pct"} <= set(df.columns)


def test_load_records_skips_bad_files_with_a_warning(results, tmp_path):
    folder, recs = results
    copy = tmp_path / "copy"
    write_record(copy, {k: v for k, v in recs["erm"].items() if k != "path"})
    (copy / "runs" / "garbage.json").write_text("{not json")
    with pytest.warns(UserWarning, match=r"skipped .*garbage\.json: unreadable"):
        df = nlbench.load_records(copy)
    assert list(df["method"]) == ["erm"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert nlbench.load_records(empty).empty
    with pytest.raises(NLBenchError, match="results folder .*missing does not exist"):
        nlbench.load_records(tmp_path / "missing")


def test_results_export_csv(results, tmp_path):
    folder, recs = results
    out = tmp_path / "sub" / "runs.csv"
    res = CliRunner().invoke(app, ["results", "export", "--csv", str(out), "--results-dir", str(folder)])
    assert res.exit_code == 0, res.output
    assert f"4 records of {folder} written to {out}" in res.stdout.replace("\n", "")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4
    erm = next(r for r in rows if r["run_name"] == recs["erm"]["run_name"])
    assert float(erm["last_acc_pct"]) == pytest.approx(100 * recs["erm"]["final"]["last_acc"])
    assert erm["oracle"] == "False" and erm["config.lr"] == "0.05"
    to_stdout = CliRunner().invoke(app, ["results", "export", "--csv", "-", "--results-dir", str(folder)])
    assert to_stdout.exit_code == 0 and to_stdout.stdout == out.read_text()
    assert len(pd.read_csv(io.StringIO(to_stdout.stdout))) == 4


def test_results_export_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(app, ["results", "export", "--csv", str(tmp_path / "x.csv"), "--results-dir",
                                   str(tmp_path / "missing")])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.splitlines() == [f"error: results folder {tmp_path / 'missing'} does not exist"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    (tmp_path / "r").mkdir()
    res = CliRunner().invoke(app, ["results", "export", "--csv", str(blocker / "x.csv"), "--results-dir",
                                   str(tmp_path / "r")])
    assert res.exit_code == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to {blocker}"), res.stderr
