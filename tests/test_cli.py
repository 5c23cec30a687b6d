"""The typer CLI: run, list, noise show, --version, and one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import nlbench
from nlbench.benchmark import harness
from nlbench.benchmark.config import RunConfig
from nlbench.cli import app

runner = CliRunner()
TINY = ["--dataset", "synthetic", "--data-opt", "n_train=400", "--data-opt", "n_test=100", "--meta-size", "40",
        "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr starting with ``error:``, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_run_writes_a_record_and_prints_a_summary(tmp_path):
    res = invoke("run", "--noise", "sym40", *TINY, "--results-dir", tmp_path)
    assert res.exit_code == 0, res.output
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1
    rec = json.loads(runs[0].read_text())
    assert (rec["method"], rec["noise"], rec["dataset"], rec["status"]) == ("erm", "sym40", "synthetic", "ok")
    assert len(rec["history"]) == 2 and rec["noise_report"]["realised_rate"] == 0.4
    out = res.stdout
    assert "erm | synthetic sym40 | seed 0" in out and "0.4000" in out
    assert f"{100 * rec['final']['last_acc']:.2f}" in out
    assert f"record: {runs[0]}" in out.replace("\n", "")
    assert res.stderr == ""
    again = invoke("run", "--noise", "sym40", *TINY, "--results-dir", tmp_path)
    assert again.exit_code == 0 and "finished record reused; pass --force to rerun" in again.stdout
    assert f"record: {runs[0]}" in again.stdout.replace("\n", "")


def test_run_passes_the_config_to_train(monkeypatch, tmp_path):
    seen = {}

    def fake_train(cfg, **kw):
        seen.update(cfg=cfg, **kw)
        return {"method": cfg.method, "dataset": cfg.dataset, "noise": cfg.noise, "seed": cfg.seed, "status": "ok",
                "noise_report": {"realised_rate": 0.25}, "final": {"last_acc": 0.5}, "history": [],
                "wall_time_s": 1.0}

    monkeypatch.setattr(harness, "train", fake_train)
    res = invoke("run", "--method", "erm-meta", "--noise", "pairflip25", "--dataset", "synthetic", "--seed", "3",
                 "--noise-seed", "7", "--epochs", "5", "--schedule", "step", "--milestones", "2,4", "--opt",
                 "a=1", "--data-opt", "dim=4", "--results-dir", tmp_path, "--force", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert seen["cfg"] == RunConfig(method="erm-meta", noise="pairflip25", dataset="synthetic", seed=3,
                                    noise_seed=7, epochs=5, schedule="step", milestones=(2, 4),
                                    method_options={"a": 1}, dataset_options={"dim": 4})
    assert (seen["results_dir"], seen["resume"], seen["device"]) == (tmp_path, False, "cpu")
    assert "50.00" in res.stdout


@pytest.mark.parametrize("kind,names", [
    ("methods", ["erm", "erm-meta", "clean-only", "oracle", "[ORACLE]"]),
    ("noises", ["symNN", "pairflipNN", "flipbackNN", "idnNN", "clean", "cifar10n-worst"]),
    ("datasets", ["synthetic", "fashion-mnist"]),
    ("models", ["mlp", "lenet"]),
])
def test_list(kind, names):
    res = invoke("list", kind)
    assert res.exit_code == 0, res.output
    for n in names:
        assert n in res.stdout


def test_noise_show_json():
    res = invoke("noise", "show", "sym40", "--dataset", "synthetic", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    T = np.array(rep["transition_matrix"])
    assert T.shape == (4, 4) and np.allclose(T.sum(axis=1), 1) and np.all(T >= 0)
    assert np.allclose(np.diag(T), 0.6)
    assert rep["realised_rate"] == 0.4 and rep["per_class_rate"] == pytest.approx([0.4] * 4)
    assert rep["n"] == 1000 and rep["spec"] == "sym40"  # 2000 samples minus the default meta set of 1000
    nominal = np.array(rep["nominal_transition_matrix"])
    assert np.allclose(nominal[~np.eye(4, dtype=bool)], 0.133333)


def test_noise_show_table():
    res = invoke("noise", "show", "pairflip30", "--dataset", "synthetic", "--meta-size", "40")
    assert res.exit_code == 0, res.output
    assert "realised rate: 0.3000 over 1960 pool samples" in res.stdout


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout == f"nlbench {nlbench.__version__}\n"


@pytest.mark.parametrize("args,fragments", [
    (["--method", "ermm"], ["unknown method 'ermm'", "Did you mean 'erm'?"]),
    (["--noise", "symm40"], ["unknown noise 'symm'", "Did you mean 'sym'?"]),
    (["--dataset", "synthetc"], ["unknown dataset 'synthetc'", "Did you mean 'synthetic'?"]),
    (["--model", "mlpp"], ["unknown model 'mlpp'", "Did you mean 'mlp'?"]),
    (["--noise", "sym-5"], ["noise rate -5% in 'sym-5' is outside [0, 100)"]),
    (["--noise", "sym100"], ["noise rate 100% in 'sym100' is outside [0, 100)"]),
    (["--noise", "sym80"], ["sym rate 80% exceeds (C-1)/C = 75.0% for 4 classes"]),
    (["--noise", "asym40"], ["asym noise needs a class map, and dataset 'synthetic' defines none"]),
    (["--meta-size", "400"], ["meta size 400 needs 100 samples of class", "at most 99 per class possible"]),
    (["--epochs", "0"], ["--epochs must be at least 1, got 0"]),
    (["--opt", "nonsense=1"], ["unknown option 'nonsense' for method 'erm'"]),
    (["--milestones", "a,b"], ["--milestones must be comma-separated integers"]),
])
def test_run_user_errors(args, fragments, tmp_path):
    # TINY comes first so each case's own option overrides it.
    res = invoke("run", *TINY, *args, "--results-dir", tmp_path)
    assert_user_error(res, *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_nonexistent_data_root(tmp_path):
    missing = tmp_path / "nope"
    res = invoke("run", "--dataset", "fashion-mnist", "--data-root", missing, "--results-dir", tmp_path)
    assert_user_error(res, f"data root '{missing}' does not exist or is not a directory")
    res = invoke("noise", "show", "sym20", "--data-root", missing)
    assert_user_error(res, "does not exist")


def test_missing_data_file(fake_fmnist, tmp_path):
    fake_fmnist.path("train_labels").unlink()
    res = invoke("run", "--dataset", "fashion-mnist", "--data-root", fake_fmnist.root, "--results-dir", tmp_path)
    assert_user_error(res, f"missing data file {fake_fmnist.path('train_labels')}", "--download")


def test_truncated_data_file(fake_fmnist, tmp_path):
    path = fake_fmnist.truncate("train_images")
    res = invoke("run", "--dataset", "fashion-mnist", "--data-root", fake_fmnist.root, "--results-dir", tmp_path)
    assert_user_error(res, f"truncated data file {path}")


def test_corrupted_data_file_via_env_root(fake_fmnist, monkeypatch):
    path = fake_fmnist.cut_gzip("test_images")
    monkeypatch.setenv("NLBENCH_DATA_ROOT", str(fake_fmnist.root))
    assert_user_error(invoke("noise", "show", "sym20", "--meta-size", "10"), f"corrupted data file {path}")


def test_run_on_fake_fashion_mnist(fake_fmnist, tmp_path):
    res = invoke("run", "--dataset", "fashion-mnist", "--data-root", fake_fmnist.root, "--noise", "asym40",
                 "--meta-size", "20", "--epochs", "1", "--batch-size", "64", "--results-dir", tmp_path, "--device",
                 "cpu", "--no-progress", "--json")
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["status"] == "ok" and rec["model"] == "lenet" and rec["sizes"]["pool"] == 180
    # asym map: 7 of the 10 classes flip; 18 per class in the pool, round(7.2) = 7 flips each
    assert rec["noise_report"]["realised_rate"] == pytest.approx(7 * 7 / 180)


@pytest.mark.parametrize("as_json", [False, True])
def test_diverged_run_exits_1(tmp_path, as_json):
    # --lr is at most 10: far-apart classes (inputs of norm ~1000) make the loss overflow instead
    res = invoke("run", *TINY, "--epochs", "1", "--lr", "10", "--data-opt", "separation=1000", "--schedule",
                 "constant", "--results-dir", tmp_path, *(["--json"] if as_json else []))
    assert res.exit_code == 1 and res.stderr == ""
    if as_json:
        assert json.loads(res.stdout)["error"] == {"reason": "non-finite training loss (nan) in epoch 1", "epoch": 1}
    else:
        assert "failed: non-finite training loss (nan) in epoch 1" in res.stdout


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = invoke("run", *TINY, "--results-dir", blocker / "results")
    assert_user_error(res, f"cannot write to {blocker / 'results' / 'runs'}")


def entry_point(*args: str) -> subprocess.CompletedProcess:
    """Run the console entry point (``main``) in a fresh interpreter, as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}
    return subprocess.run([sys.executable, "-m", "nlbench.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("args,fragment", [
    (["run", "--seed", "-1", "--dataset", "synthetic"], "Invalid value for '--seed'"),
    (["run", "--seed", "abc"], "Invalid value for '--seed'"),
    (["run", "--noise-seed", "-3"], "Invalid value for '--noise-seed'"),
    (["run", "--no-such-option"], "No such option"),
    (["list", "things"], "Invalid value for 'kind'"),
    (["run", "--method", "ermm", "--dataset", "synthetic"], "Did you mean 'erm'?"),
])
def test_console_entry_point_usage_errors(args, fragment, tmp_path):
    proc = entry_point(*args, *(["--results-dir", str(tmp_path)] if args[0] == "run" else []))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_console_entry_point_version():
    proc = entry_point("--version")
    assert proc.returncode == 0 and proc.stdout == f"nlbench {nlbench.__version__}\n" and proc.stderr == ""


def test_run_preset_keeps_its_dataset_options(monkeypatch):
    """`run --preset fmnist-memorize` trains on the preset's 5,100-image split; a --data-opt adds to the preset's
    dataset options key by key instead of replacing them (a regression: the empty --data-opt list wiped train_size)."""
    from nlbench.errors import NLBenchError

    seen = []

    def fake_train(cfg, **_):
        seen.append(cfg)
        raise NLBenchError("stop")

    monkeypatch.setattr(harness, "train", fake_train)
    invoke("run", "--preset", "fmnist-memorize", "--method", "erm", "--noise", "sym50")
    invoke("run", "--preset", "fmnist-memorize", "--method", "erm", "--noise", "sym50", "--data-opt", "train_size=2000")
    assert seen[0].dataset_options == {"train_size": 5100}
    assert seen[0].hash() == RunConfig.from_preset("fmnist-memorize", method="erm", noise="sym50").hash()
    assert seen[1].dataset_options == {"train_size": 2000}


def test_run_config_file_sits_between_preset_and_explicit_options(tmp_path, monkeypatch):
    """--config run.toml: its keys override the preset (which it may name), explicit options override it, and
    option dicts merge key by key; unknown keys and bad TOML get one line."""
    from nlbench.errors import NLBenchError

    seen = []

    def fake_train(cfg, **_):
        seen.append(cfg)
        raise NLBenchError("stop")

    monkeypatch.setattr(harness, "train", fake_train)
    path = tmp_path / "run.toml"
    path.write_text('preset = "fmnist-memorize"\nepochs = 12\nmethod = "surrogate"\nmilestones = [10]\n'
                    'method_options = { w0 = 0.5 }\n')
    invoke("run", "--config", path, "--noise", "sym50", "--opt", "alpha=1.0")
    invoke("run", "--config", path, "--noise", "sym50", "--epochs", "20", "--method", "erm", "--milestones", "15")
    a, b = seen
    assert (a.epochs, a.milestones, a.method, a.dataset_options) == (12, (10,), "surrogate", {"train_size": 5100})
    assert a.method_options == {"alpha": 1.0, "w0": 0.5}  # preset's alpha 3 < file's w0 < the explicit alpha
    assert (b.epochs, b.milestones, b.method, b.method_options) == (20, (15,), "erm", {"w0": 0.5})
    path.write_text("epoch = 3\n")
    assert_user_error(invoke("run", "--config", path), "unknown key 'epoch'. Did you mean 'epochs'?")
    path.write_text("epochs = [\n")
    assert_user_error(invoke("run", "--config", path), "is not valid TOML")
    assert_user_error(invoke("run", "--config", tmp_path / "absent.toml"), "cannot read --config")


def test_run_help_defaults_come_from_runconfig():
    """The defaults shown by `run --help` are RunConfig's own, not a copy."""
    from dataclasses import fields

    text = " ".join(invoke("run", "--help").output.split())
    for f in fields(RunConfig):
        if f.name in ("epochs", "batch_size", "meta_size", "momentum"):
            assert f"[default: {f.default:g}]" in text.replace("│", "").replace("  ", " ") or \
                f"[default: {f.default}]" in text, f.name
