"""The three-phase study (nlbench.phases, `nlbench phases`, the fashion-mnist-binary dataset) on tiny data."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nlbench.cli import app
from nlbench.datasets import load_dataset
from nlbench.errors import NLBenchError
from nlbench.phases import (
    LOG_COLUMNS,
    PhaseConfig,
    detect_phases,
    init_mlp,
    make_task,
    meta_scores_squared,
    mlp_forward,
    plot_phases,
    reference_scores,
    run_phases,
)

SMALL = dict(n_train=200, meta_size=40, width=128, dim=8, iterations=200)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These full-batch problems are tiny: on a shared 2-core machine a second thread costs ten times what it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_run(one_thread):
    cfg = PhaseConfig(**SMALL)
    return cfg, run_phases(cfg)


def test_antisymmetric_init_starts_at_zero_output():
    params = init_mlp(5, 16, torch.Generator().manual_seed(3))
    assert params["W"].shape == (16, 5) and params["a"].shape == (16,)
    f = mlp_forward(params, torch.randn(7, 5, generator=torch.Generator().manual_seed(1)))
    assert f.abs().max() < 1e-6  # zero up to the summation order of the matmul
    assert torch.equal(params["W"][:8], params["W"][8:]) and torch.equal(params["a"][:8], -params["a"][8:])


@pytest.mark.parametrize("eta", [0.3, 2.0])
def test_exact_scores_match_double_backward(eta):
    task = make_task(PhaseConfig(n_train=30, meta_size=10, dim=6))
    gen = torch.Generator().manual_seed(0)
    # Away from the antisymmetric initialisation, so that f != 0 and every term of the score is exercised.
    params = {k: (v + 0.3 * torch.randn(v.shape, generator=gen)).double() for k, v in init_mlp(6, 64, gen).items()}
    x, y, xm, ym = (t.double() for t in (task.x, task.y_noisy, task.x_meta, task.y_meta))
    w = torch.rand(30, generator=gen, dtype=torch.float64)
    fast = meta_scores_squared(params, x, y, w, xm, ym, eta)
    ref = reference_scores(params, x, y, w, xm, ym, eta)
    assert fast.shape == (30,)
    assert ref.abs().max() > 1e-4
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-14)


def test_task_flips_exact_counts_and_pool_ignores_meta_size():
    a = make_task(PhaseConfig(n_train=100, meta_size=20, noise_rate=0.3, dim=4))
    b = make_task(PhaseConfig(n_train=100, meta_size=50, noise_rate=0.3, dim=4))
    assert torch.equal(a.x, b.x) and torch.equal(a.y_noisy, b.y_noisy)
    for c in (-1.0, 1.0):
        assert int(((a.y_true == c) & (a.y_noisy != a.y_true)).sum()) == 15  # round(50 * 0.3) per class
    assert int((a.y_meta == 1).sum()) == 10 and int((b.y_meta == -1).sum()) == 25
    assert a.noisy.sum() == 30 and a.x_meta.shape == (20, 4)


def test_log_columns_and_start(small_run):
    cfg, log = small_run
    assert tuple(log) == LOG_COLUMNS
    assert all(len(v) == cfg.iterations + 1 for v in log.values())
    assert log["iteration"][-1] == cfg.iterations
    assert log["clean_weight"][0] == log["noisy_weight"][0] == 0.5
    assert log["meta_loss"][0] == pytest.approx(0.5)  # f = 0 at initialisation, labels +-1
    assert log["auroc"][0] == 0.5


def test_small_run_has_ordered_phases(small_run):
    cfg, log = small_run
    ph = detect_phases(log)
    t_a, t_floor, t_f, t_p = (ph[k] for k in ("alignment_end", "noisy_floor_reached", "filtering_end",
                                             "post_filtering_start"))
    assert (t_a, t_floor, t_f, t_p) == (5, 11, 12, 12)
    assert 0 < t_a <= t_f <= t_p <= cfg.iterations
    assert log["noisy_weight"][t_f] < log["clean_weight"][t_f] - 0.5
    assert [p["name"] for p in ph["phases"]] == ["alignment", "filtering", "post-filtering"]
    assert ph["phases"][-1]["end"] == cfg.iterations
    assert ph["auroc_filtering_end"] > 0.99


def test_surrogate_run_is_deterministic_and_filters():
    cfg = PhaseConfig(**{**SMALL, "method": "surrogate", "iterations": 60})
    a, b = run_phases(cfg), run_phases(cfg)
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in LOG_COLUMNS)
    assert a["noisy_weight"][-1] < 0.1 < 0.9 < a["clean_weight"][-1]


def _log(q, c, loss):
    n = len(q)
    return {"iteration": np.arange(n), "noisy_weight": np.array(q), "clean_weight": np.array(c),
            "meta_loss": np.array(loss), "auroc": np.linspace(0.5, 1.0, n), "signal": np.linspace(2.0, 1.0, n)}


def test_detect_phases_rule_on_a_hand_made_log():
    q = [0.5, 0.4, 0.3, 0.2, 0.1, 0.04, 0.0, 0.0, 0.02, 0.05, 0.08]
    c = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.0, 0.97, 0.95, 0.9]
    loss = [1.0, 0.9, 0.8, 0.5, 0.4, 0.3, 0.25, 0.15, 0.1, 0.05, 0.04]
    ph = detect_phases(_log(q, c, loss))
    assert (ph["alignment_end"], ph["noisy_floor_reached"], ph["post_filtering_start"]) == (3, 5, 7)
    assert ph["filtering_end"] == 7 and ph["noisy_weight_argmin"] == 6
    assert ph["noisy_rise"] == pytest.approx(0.08) and ph["clean_fall"] == pytest.approx(0.1)
    assert ph["filtered"] and ph["drifted"]
    assert ph["auroc_filtering_end"] == pytest.approx(0.85) and ph["signal_at_post_filtering"] == pytest.approx(0.65)
    assert ph["phases"] == [{"name": "alignment", "start": 0, "end": 3}, {"name": "filtering", "start": 3, "end": 7},
                            {"name": "post-filtering", "start": 7, "end": 10}]


def test_detect_phases_without_contraction_or_fall():
    ph = detect_phases(_log([0.5, 0.3, 0.1, 0.1], [0.5, 0.7, 0.9, 0.9], [1.0, 0.9, 0.8, 0.7]))
    assert (ph["alignment_end"], ph["noisy_floor_reached"], ph["post_filtering_start"]) == (1, 2, None)
    assert ph["phases"][-1] == {"name": "filtering", "start": 1, "end": 3}
    assert not ph["filtered"] and not ph["drifted"]
    flat = detect_phases(_log([0.5, 0.5, 0.6], [0.5, 0.5, 0.4], [1.0, 0.5, 0.1]))
    assert flat["alignment_end"] is None and flat["phases"] == []


def test_plot_writes_a_png(tmp_path, small_run):
    _, log = small_run
    path = plot_phases(log, detect_phases(log), tmp_path / "sub" / "p.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("bad", [dict(noise_rate=0.5), dict(method="erm"), dict(dataset="cifar10"),
                                 dict(width=63), dict(meta_size=1), dict(w0=1.5)])
def test_config_rejects_bad_settings(bad):
    with pytest.raises(NLBenchError):
        PhaseConfig(**bad).validate()


@pytest.mark.parametrize("bad, message", [
    (dict(width=10**9), "width must be in"), (dict(iterations=10**12), "iterations must be in"),
    (dict(lr=math.inf), "lr must be finite"), (dict(alpha=math.inf), "alpha must be finite"),
    (dict(separation=math.inf), "separation must be finite"), (dict(dim=10**9), "dim must be in"),
    (dict(n_train=200_000, width=65_536), "exceeds 200,000,000 elements"),
    (dict(meta_size=10**8), "meta_size must be in")])
def test_config_refuses_unbounded_settings_before_any_work(bad, message):
    """Resource bombs and non-finite values get one line, before any allocation (hardening issue, item 1)."""
    with pytest.raises(NLBenchError, match=message):
        PhaseConfig(**bad).validate()


CLI_SMALL = ["--iterations", "40", "--n-train", "100", "--meta-size", "20", "--width", "64", "--dim", "4"]


def test_cli_writes_json_png_and_csv(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "ph"
    res = CliRunner().invoke(app, ["phases", "--out", str(out), "--seed", "3", "--noise-rate", "0.3", "--threads", "2",
                                   *CLI_SMALL])
    assert res.exit_code == 0, res.output
    assert torch.get_num_threads() == threads
    rec = json.loads((out / "phases.json").read_text())
    assert rec["settings"] == {**dataclasses.asdict(PhaseConfig()), "seed": 3, "noise_rate": 0.3, "iterations": 40,
                               "n_train": 100, "meta_size": 20, "width": 64, "dim": 4}
    ph = rec["phases"]
    assert ph["iterations"] == 40 and 0 < ph["alignment_end"] <= ph["noisy_floor_reached"]
    assert rec["wall_s"] > 0
    assert (out / "phases.png").read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.reader((out / "log.csv").open()))
    assert tuple(rows[0]) == LOG_COLUMNS and len(rows) == 42 and rows[-1][0] == "40"


@pytest.mark.parametrize("args, needle", [(["--noise-rate", "0.6"], "noise rate"),
                                           (["--method", "mwnet"], "method must be one of"),
                                           (["--dataset", "cifar10"], "dataset must be one of")])
def test_cli_user_mistakes_are_one_line(tmp_path, args, needle):
    res = CliRunner().invoke(app, ["phases", "--out", str(tmp_path / "x"), *CLI_SMALL, *args])
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x").exists()


def test_cli_defaults_match_the_library():
    import inspect

    from nlbench.cli.phases import phases

    defaults = {k: p.default for k, p in inspect.signature(phases).parameters.items()}
    for f in dataclasses.fields(PhaseConfig):
        assert defaults[f.name] == f.default, f.name


def test_fashion_mnist_binary_from_fake_files(fake_fmnist):
    labels = fake_fmnist.arrays["train_labels"]
    keep = np.isin(labels, [0, 2])
    ds = load_dataset("fashion-mnist-binary", fake_fmnist.root, n_train=None)
    assert ds.classes == ["T-shirt/top", "Pullover"]
    assert ds.x_train.shape == (int(keep.sum()), 784) and ds.x_train.dtype == torch.float32
    assert int(ds.y_train.sum()) == int((labels == 2).sum())
    assert ds.x_test.shape[0] == int(np.isin(fake_fmnist.arrays["test_labels"], [0, 2]).sum())
    torch.testing.assert_close(ds.x_train.mean(0), torch.zeros(784), atol=1e-4, rtol=0)
    sub = load_dataset("fashion-mnist-binary", fake_fmnist.root, n_train=10)
    assert torch.equal(sub.x_train, ds.x_train[:10])  # nested subsets of one permutation
    other = load_dataset("fashion-mnist-binary", fake_fmnist.root, classes="7,9", n_train=None)
    assert other.classes == ["Sneaker", "Ankle boot"]
    with pytest.raises(NLBenchError, match="two distinct labels"):
        load_dataset("fashion-mnist-binary", fake_fmnist.root, classes="3,3")


def test_fashion_mnist_binary_task(fake_fmnist):
    task = make_task(PhaseConfig(dataset="fashion-mnist-binary", n_train=20, meta_size=6), fake_fmnist.root)
    assert task.x.shape == (20, 784) and task.x_meta.shape == (6, 784)
    assert int((task.y_meta == 1).sum()) == 3
    with pytest.raises(NLBenchError, match="meta size"):
        make_task(PhaseConfig(dataset="fashion-mnist-binary", n_train=20, meta_size=200), fake_fmnist.root)
