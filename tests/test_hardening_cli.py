"""The hardening hooks of the CLI: ``--portable`` (run, grid and its workers, Ray), ``results export`` through
the formula-safe CSV writer, ``results verify`` (reruns in a fresh process with the record's numerics, the epoch
limit, stale records), ``results check``'s stale-record warnings, and ``write_record``'s schema check."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from nlbench import portable
from nlbench.benchmark import verify as V
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.records import record_path, runs_dir, scan_records, write_record
from nlbench.cli import app
from nlbench.errors import NLBenchError

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--data-opt", "n_train=300", "--data-opt", "n_test=100", "--meta-size", "40",
        "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress", "--no-checkpoint"]
NUMERICS_VARS = (portable.ENV_FLAG, *portable.PINS)


def _has_avx2() -> bool:
    """What portable mode needs (AVX2 and FMA), read as :mod:`nlbench.portable` reads it."""
    from nlbench.portable import _cpu_has_avx2

    return _cpu_has_avx2() is True


needs_avx2 = pytest.mark.skipif(not _has_avx2(), reason="portable mode needs an x86-64 CPU with AVX2")


@pytest.fixture(autouse=True)
def _native_numerics(monkeypatch):
    """Every test starts native (no pins in this process's environment) and leaves it so; torch's oneDNN
    switch is this process's too, so portable mode never turns it off here (children are fresh processes)."""
    for key in (*NUMERICS_VARS, "NLBENCH_DATA_ROOT"):
        monkeypatch.setenv(key, "")  # so that teardown restores the variable even if the test sets it
        monkeypatch.delenv(key)
    monkeypatch.setattr(portable, "_disable_onednn", lambda: None)


def record(method: str = "erm", seed: int = 0, acc: float = 0.5, epochs: int = 2, status: str = "ok",
           **config) -> dict:
    """A schema-valid record of a made-up run."""
    cfg = RunConfig(method=method, noise="sym20", dataset="synthetic", seed=seed, epochs=epochs, meta_size=40,
                    **config)
    history = [{"epoch": e, "test_acc": acc, "epoch_time_s": 0.1} for e in range(1, epochs + 1)]
    final = {"last_acc": acc, "best_acc": acc, "last5_acc": acc} if status == "ok" else {}
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": method, "noise": "sym20",
            "dataset": "synthetic", "model": cfg.model, "seed": seed, "status": status, "oracle": False,
            "config": cfg.to_dict(), "env": {"threads": 1}, "noise_report": {"realised_rate": 0.2},
            "history": history, "final": final, "wall_time_s": 0.2}


# ---------------------------------------------------------------------------------------------- --portable


def test_portable_is_one_shared_option_of_run_and_grid_with_its_envvar():
    for name in ("run", "grid"):
        cmd = get_command(app).commands[name]
        opt = next(p for p in cmd.params if p.name == "portable")
        assert opt.opts == ["--portable"] and opt.is_flag and not opt.secondary_opts
        assert opt.envvar == portable.ENV_FLAG and opt.default is False


def test_portable_envvar_garbage_is_a_usage_error_of_one_line():
    proc = subprocess.run([sys.executable, "-m", "nlbench.cli", "run", "--dataset", "synthetc"],
                          env={**os.environ, portable.ENV_FLAG: "maybe"}, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--portable" in lines[0], proc.stderr


@pytest.fixture(scope="module")
def portable_record(tmp_path_factory) -> tuple:
    """``run --portable`` in a fresh interpreter (this one has run torch kernels, which pins cannot change):
    ``(results folder, record)``."""
    folder = tmp_path_factory.mktemp("portable")
    env = {k: v for k, v in os.environ.items() if k not in NUMERICS_VARS}
    proc = subprocess.run([sys.executable, "-m", "nlbench.cli", "run", "--portable", *TINY, "--results-dir",
                           str(folder), "--json"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder, json.loads(proc.stdout)


@needs_avx2
def test_run_portable_record_says_portable(portable_record):
    folder, rec = portable_record
    assert rec["env"]["portable"] is True and rec["env"]["cpu_capability"] == "AVX2"
    assert rec["env"]["numerics_pins"]["MKL_CBWR"] == "COMPATIBLE"
    assert json.loads(record_path(folder, rec["run_name"]).read_text())["env"]["portable"] is True


@needs_avx2
@pytest.mark.slow  # a second fresh interpreter training in portable mode (~8 s on 2 loaded cores)
def test_verify_reruns_a_portable_record_in_portable_mode_bit_identically(portable_record):
    folder, rec = portable_record
    res = runner.invoke(app, ["results", "verify", "--results-dir", str(folder)])
    assert res.exit_code == 0, res.output
    assert f"{rec['run_name']}: bit-identical [portable numerics]" in res.stdout
    assert "1 rerun: 1 bit-identical" in res.stdout and "(1 made in portable numerics, 0 native)" in res.stdout


@needs_avx2
def test_grid_portable_reaches_spawned_local_workers(tmp_path):
    res = runner.invoke(app, ["grid", "--methods", "erm", "--noises", "sym40", "--portable", "--workers", "2",
                              *TINY, "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert os.environ[portable.ENV_FLAG] == "1"  # the driver switched it on, for the workers it spawns
    (rec,), problems = scan_records(tmp_path)
    assert problems == [] and rec["env"]["portable"] is True and rec["env"]["cpu_capability"] == "AVX2"


def test_ray_tasks_get_the_pins_in_their_runtime_env(monkeypatch):
    from nlbench.benchmark.ray_executor import portable_runtime_env

    assert portable_runtime_env() is None
    monkeypatch.setenv(portable.ENV_FLAG, "1")
    assert portable_runtime_env() == {"env_vars": {portable.ENV_FLAG: "1", "ATEN_CPU_CAPABILITY": "avx2",
                                                   "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


# ---------------------------------------------------------------------------------------------- export


def test_export_neutralises_formula_cells_from_hostile_records(tmp_path):
    hostile = '=HYPERLINK("http://evil.example","click")'
    write_record(tmp_path, record("surrogate", method_options={"mode": hostile}))
    failed = record(seed=1, status="failed")
    failed["error"] = {"reason": "+SUM(A1:A9)", "epoch": 1}
    write_record(tmp_path, failed)
    for seed, start in ((3, "-"), (4, "@")):
        rec = record(seed=seed, status="failed")
        rec["error"] = {"reason": f"{start}cmd|' /C calc'!A0", "epoch": 1}
        write_record(tmp_path, rec)
    res = runner.invoke(app, ["results", "export", "--csv", "-", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert len(rows) == 4
    cells = [c for row in rows for c in row.values() if c]
    assert "'" + hostile in cells and "'+SUM(A1:A9)" in cells
    assert "'-cmd|' /C calc'!A0" in cells and "'@cmd|' /C calc'!A0" in cells
    assert not [c for c in cells if c[0] in "=+@" or (c[0] == "-" and not _number(c))]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- verify


def test_verify_reports_stale_and_over_limit_records_without_rerunning(tmp_path, monkeypatch):
    stale = record("forward", acc=0.4)  # no method_version: version 1; forward is version 2
    write_record(tmp_path, stale)
    long = record(seed=1, epochs=3)
    write_record(tmp_path, long)

    def no_rerun(*args, **kwargs):
        raise AssertionError("nothing may be rerun")

    monkeypatch.setattr(V, "rerun", no_rerun)
    res = runner.invoke(app, ["results", "verify", "--results-dir", str(tmp_path), "--max-epochs", "2"])
    assert res.exit_code == 0, res.output
    assert (f"{stale['run_name']}: stale, made by forward version 1, now 2: its computation has changed; "
            "not rerun [native numerics") in res.stdout
    assert f"{long['run_name']}: skipped, its config asks for 3 epochs, over the 2" in res.stdout
    assert "0 rerun: 0 bit-identical" in res.stdout and "1 skipped over the epoch limit; 1 stale" in res.stdout
    res = runner.invoke(app, ["results", "verify", "--results-dir", str(tmp_path), "--max-epochs", "0"])
    assert res.exit_code == 2 and "--max-epochs" in res.stderr


def test_verify_default_epoch_limit_is_the_librarys():
    cmd = get_command(app).commands["results"].commands["verify"]
    assert next(p for p in cmd.params if p.name == "max_epochs").default == V.MAX_RERUN_EPOCHS


def test_verify_hands_each_record_to_its_rerun_and_tells_its_numerics(tmp_path, monkeypatch):
    seen = []

    def fake_rerun(rec, *, data_root=None, device="cpu", timeout=None):
        seen.append((rec["run_name"], V.record_threads(rec), device))
        return {**rec, "env": {**rec["env"], "portable": False}}

    monkeypatch.setattr(V, "rerun", fake_rerun)
    rec = record()
    rec["env"] = {"threads": 3, "portable": True}
    write_record(tmp_path, rec)
    res = runner.invoke(app, ["results", "verify", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert seen == [(rec["run_name"], 3, "cpu")]
    assert f"{rec['run_name']}: bit-identical [portable numerics] [numerics differ: portable True -> False]" \
        in res.stdout


def test_verify_reports_a_record_it_cannot_train_and_goes_on(tmp_path, monkeypatch):
    """A schema-valid record naming a method or dataset this nlbench lacks is the folder's fault: its line says
    so, the other records are still rerun, and the exit code is 1 (no fresh process is started for it)."""
    good, ghost, elsewhere = record(), record(seed=1), record(seed=2)
    ghost["method"] = ghost["config"]["method"] = "ghost-method"
    elsewhere["dataset"] = elsewhere["config"]["dataset"] = "synthetc"
    for rec in (good, ghost, elsewhere):
        write_record(tmp_path, rec)
    reran = []
    monkeypatch.setattr(V, "rerun", lambda rec, **kw: reran.append(rec["run_name"]) or rec)
    res = runner.invoke(app, ["results", "verify", "--results-dir", str(tmp_path)])
    assert res.exit_code == 1, res.output
    assert reran == [good["run_name"]]
    assert f"{ghost['run_name']}: cannot be rerun: unknown method 'ghost-method'" in res.stdout
    assert f"{elsewhere['run_name']}: cannot be rerun: unknown dataset 'synthetc'. Did you mean 'synthetic'?" \
        in res.stdout
    assert "1 rerun: 1 bit-identical" in res.stdout and "; 2 cannot be rerun" in res.stdout


def test_rerun_reads_the_record_from_its_last_line_and_refuses_anything_else(monkeypatch):
    class Done:
        returncode, stderr = 0, ""

        def __init__(self, stdout):
            self.stdout = stdout

    rec = record()
    monkeypatch.setattr(V.subprocess, "run", lambda *a, **kw: Done("a library's chatter\n" + json.dumps(rec) + "\n"))
    assert V.rerun(rec)["history"] == rec["history"]
    monkeypatch.setattr(V.subprocess, "run", lambda *a, **kw: Done("not json\n"))
    with pytest.raises(NLBenchError, match="printed no record"):
        V.rerun(rec)


# ---------------------------------------------------------------------------------------------- check


def test_check_warns_about_stale_records_and_keeps_the_exit_code(tmp_path):
    write_record(tmp_path, record())
    stale = record("forward", seed=1)
    write_record(tmp_path, stale)
    res = runner.invoke(app, ["results", "check", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    path = record_path(tmp_path, stale["run_name"])
    assert res.stderr.splitlines() == [f"warning: {path}: stale record, made by forward version 1, now 2: its "
                                       "computation has changed"]
    assert res.stdout == f"2 valid records, 1 stale (older method version; warning), 0 problem(s) in {tmp_path}\n"
    (runs_dir(tmp_path) / "garbage.json").write_text("{")
    res = runner.invoke(app, ["results", "check", "--results-dir", str(tmp_path)])
    assert res.exit_code == 1 and "1 stale" in res.stdout and "1 problem(s)" in res.stdout


# ---------------------------------------------------------------------------------------------- write_record


@pytest.mark.parametrize("mutate, words", [
    (lambda r: r["history"][0].update(test_acc=1.5), "history"),
    (lambda r: r.update(status="done"), "status"),
    (lambda r: r.pop("run_name"), "missing key 'run_name'"),
    (lambda r: r.update(run_name="../../evil"), "not a run name"),
    (lambda r: r.update(method="x|y\n# z"), "not a plain name"),
])
def test_write_record_refuses_a_record_that_breaks_the_schema(tmp_path, mutate, words):
    rec = record()
    mutate(rec)
    with pytest.raises(NLBenchError, match="breaks the record schema") as e:
        write_record(tmp_path / "results", rec)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "results").exists() and not (tmp_path / "evil.json").exists()


def test_write_record_stores_nan_as_null_and_accepts_it(tmp_path):
    rec = record()
    rec["history"][0]["val_acc"] = float("nan")
    path = write_record(tmp_path, rec)
    assert json.loads(path.read_text())["history"][0]["val_acc"] is None


# ---------------------------------------------------------------------------------------------- docs/bad-input.md


def test_bad_input_page_shows_long_commands_shortened():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bad_input_table_cli", root / "benchmarks" / "bad_input_table.py")
    table = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bad_input_table_cli", table)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(table)
    long = next(c for c in table.CASES if c.id == "noise-long")
    shown = table.shown_command(long.args)
    assert shown.startswith("nlbench run --dataset synthetic --noise sym000") and shown.endswith("… (5,040 characters)")
    assert len(shown) < table.MAX_SHOWN_COMMAND + 30
    assert table.shown_command(("run", "--epochs", "0")) == "nlbench run --epochs 0"
    page = (root / "docs" / "bad-input.md").read_text()
    assert f"`{shown}`" in page and max(map(len, page.splitlines())) < 1000
    assert {c.id for c in table.CASES} >= {"config-method-type", "config-augment-type", "config-options-type",
                                           "config-record-options", "config-fifo", "config-deep", "augment-vectors",
                                           "grid-opt-nobody", "grid-file-key"}
    assert all(c.what in page for c in table.CASES)  # the page was regenerated with every case
