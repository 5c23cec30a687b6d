"""The feature-space view: the pure PCA and sampling functions, the harness option (it must not change training)
and ``nlbench plot features`` (plus ``nlbench plot`` without a subcommand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nlbench.benchmark import harness
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.features import FeatureView, feature_options, feature_sample, pca_2d
from nlbench.benchmark.harness import make_prep, noisy_pool, train
from nlbench.benchmark.records import load_record
from nlbench.cli import app
from nlbench.datasets import Dataset
from nlbench.errors import NLBenchError

PNG = b"\x89PNG\r\n\x1a\n"


# --- pure functions -----------------------------------------------------------------------------------------------

def test_pca_2d_axes_centring_and_sign():
    # meta spread 5 along u = (0.6, -0.8) and 1 along v = (0.8, 0.6), centred at (1, 2)
    u, v, c = np.array([0.6, -0.8]), np.array([0.8, 0.6]), np.array([1.0, 2.0])
    meta = c + np.array([5 * u, -5 * u, v, -v])
    feats = c + np.array([2 * u, 3 * v, [0.0, 0.0]])
    # PC1 = +-u; its largest |loading| (-0.8) must come out positive, so PC1 = -u; PC2 = v (0.8 already > 0)
    np.testing.assert_allclose(pca_2d(meta, feats), [[-2, 0], [0, 3], [0, 0]], atol=1e-12)
    np.testing.assert_allclose(pca_2d(meta[::-1], feats), pca_2d(meta, feats), atol=1e-12)  # order-free


def test_pca_2d_degenerate_inputs():
    # one feature dimension: the second coordinate is 0, not noise
    np.testing.assert_allclose(pca_2d(np.array([[1.0], [3.0]]), np.array([[4.0], [0.0]])), [[2, 0], [-2, 0]])
    # two meta points in 3-D have one direction of variance
    out = pca_2d(np.array([[0.0, 0, 0], [0, 0, -2]]), np.array([[0.0, 5, 3]]))
    np.testing.assert_allclose(out, [[4, 0]])
    with pytest.raises(ValueError):
        pca_2d(np.zeros((1, 3)), np.zeros((2, 3)))


def test_feature_sample_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2, 3], [50, 30, 5, 15])
    idx = feature_sample(labels, 40, np.random.default_rng(0))
    # water-filling: class 2 gives its 5, class 3 gets 35 // 3 = 11, then 12 and 12
    assert np.bincount(labels[idx]).tolist() == [12, 12, 5, 11]
    assert idx.tolist() == sorted(set(idx.tolist()))
    assert np.array_equal(idx, feature_sample(labels, 40, np.random.default_rng(0)))
    assert not np.array_equal(idx, feature_sample(labels, 40, np.random.default_rng(1)))
    assert feature_sample(labels, 1000, np.random.default_rng(0)).tolist() == list(range(100))


def test_feature_options():
    assert feature_options({}, 3) is None
    assert feature_options({"feature_epochs": [3, 0, 1, 1]}, 3) == ((0, 1, 3), 2000)
    assert feature_options({"feature_epochs": [2], "feature_samples": 10}, 3) == ((2,), 10)
    for bad in ({"feature_epochs": [4]}, {"feature_epochs": []}, {"feature_epochs": ["1"]},
                {"feature_epochs": [1], "feature_samples": 0}):
        with pytest.raises(NLBenchError):
            feature_options(bad, 3)


def test_sample_depends_only_on_the_noise_seed():
    from nlbench.datasets import load_dataset

    ds = load_dataset("synthetic", None, n_train=400)

    def view(**kw) -> FeatureView:
        cfg = RunConfig(noise="sym40", dataset="synthetic", epochs=2, meta_size=40, dataset_options={"n_train": 400},
                        record_options={"feature_epochs": [1], "feature_samples": 40}, **kw)
        noisy = noisy_pool(cfg, ds)
        return FeatureView.create(cfg.record_options, cfg.epochs, cfg.effective_noise_seed, noisy.pool_noisy,
                                  ds.y_train.numpy()[noisy.splits.pool], len(noisy.splits.meta), ds.classes)

    a = view(method="erm", seed=0, noise_seed=5)
    b = view(method="surrogate", seed=3, noise_seed=5)
    assert a.sample_index.tolist() == b.sample_index.tolist() and a.noisy_label.tolist() == b.noisy_label.tolist()
    assert np.bincount(a.true_label).tolist() == [10, 10, 10, 10]
    assert a.sample_index.tolist() != view(seed=0, noise_seed=6).sample_index.tolist()
    with pytest.raises(NLBenchError, match="meta-size"):
        FeatureView.create({"feature_epochs": [1]}, 2, 0, np.zeros(10, int), np.zeros(10, int), 0, ["a"])


# --- the harness option on a tiny image set with LeNet (BatchNorm) ------------------------------------------------

def tiny_images() -> Dataset:
    rng = np.random.default_rng(0)
    y = np.arange(240) % 4
    x = rng.integers(0, 80, size=(240, 1, 12, 12), dtype=np.uint8)
    for c in range(4):  # a bright quadrant per class
        x[y == c, :, 6 * (c // 2):6 * (c // 2) + 6, 6 * (c % 2):6 * (c % 2) + 6] += 150
    t = torch.from_numpy
    return Dataset("tiny-images", t(x[:200]), t(y[:200]), t(x[200:]), t(y[200:]), classes=list("abcd"))


def tiny_cfg(**kw) -> RunConfig:
    return RunConfig(**{**dict(method="erm", noise="sym40", dataset="tiny-images", model="lenet", epochs=2,
                               batch_size=32, meta_size=20), **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same LeNet run with and without the feature view; the trained models are kept."""
    models = []
    real = harness.create_model

    def keep(*args, **kwargs):
        models.append(real(*args, **kwargs))
        return models[-1]

    results = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    mp.setattr(harness, "create_model", keep)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only contend (60x slower on a busy machine)
    try:
        ds = tiny_images()
        plain = train(tiny_cfg(), device="cpu", dataset=ds)
        viewed = train(tiny_cfg(record_options={"feature_epochs": [2, 0], "feature_samples": 50}), device="cpu",
                       dataset=ds, results_dir=results)
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return plain, viewed, models, ds, results


def test_the_view_does_not_change_training(runs):
    plain, viewed, (m_plain, m_viewed), _, _ = runs
    assert "features" not in plain

    def strip(h):  # as JSON, so NaN (no validation split) compares equal
        return json.dumps([{k: v for k, v in e.items() if k != "epoch_time_s"} for e in h])

    assert strip(plain["history"]) == strip(viewed["history"])
    assert plain["config_hash"] != viewed["config_hash"]  # a run with a view is a different record
    buffers = dict(m_plain.named_buffers())
    assert {k for k in buffers if "running" in k} and buffers.keys() == dict(m_viewed.named_buffers()).keys()
    for name, b in m_viewed.named_buffers():  # running stats (and num_batches_tracked) untouched
        assert torch.equal(b, buffers[name]), name
    for (name, p), q in zip(m_viewed.named_parameters(), m_plain.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_the_view_is_stored_with_the_right_shapes_and_values(runs):
    _, viewed, (_, model), ds, results = runs
    block = viewed["features"]
    assert set(block) == {"sample_index", "noisy_label", "true_label", "is_noisy", "classes", "epochs"}
    assert sorted(block["epochs"]) == ["0", "2"] and block["classes"] == list("abcd")
    n = len(block["sample_index"])
    assert n == 50 and all(np.asarray(block["epochs"][e]).shape == (50, 2) for e in ("0", "2"))
    # 200 train - 20 meta = 180 in the pool (45 per class): the sample is 13, 13, 12, 12 (leftovers at random)
    assert sorted(np.bincount(block["true_label"]).tolist()) == [12, 12, 13, 13]
    noisy = noisy_pool(tiny_cfg(), ds)
    pool = noisy.splits.pool
    idx = np.asarray(block["sample_index"])
    assert block["true_label"] == ds.y_train.numpy()[pool][idx].tolist()
    assert block["noisy_label"] == noisy.pool_noisy[idx].tolist()
    assert block["is_noisy"] == (noisy.pool_noisy[idx] != ds.y_train.numpy()[pool][idx]).tolist()
    # the last epoch's coordinates are the PCA of the trained model's eval-mode features
    model.eval()
    prep = make_prep(ds, torch.device("cpu"))
    with torch.no_grad():
        meta = model.features(prep(ds.x_train[torch.from_numpy(noisy.splits.meta)])).numpy()
        feats = model.features(prep(ds.x_train[torch.from_numpy(pool[idx])])).numpy()
    np.testing.assert_allclose(block["epochs"]["2"], pca_2d(meta, feats), atol=1e-3)
    assert block["epochs"]["0"] != block["epochs"]["2"]
    stored = load_record(viewed["path"])
    assert stored["features"] == json.loads(json.dumps(block))
    assert all(v == round(v, 4) for xy in stored["features"]["epochs"]["2"] for v in xy)


# --- the CLI ------------------------------------------------------------------------------------------------------

def test_plot_features_writes_a_png(runs, tmp_path):
    _, viewed, _, _, _ = runs
    out = tmp_path / "f.png"
    res = CliRunner().invoke(app, ["plot", "features", viewed["path"], "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == PNG and f"feature view written to {out}" in res.stdout.replace("\n", "")


def test_plot_features_without_a_view_fails_cleanly(runs, tmp_path):
    _, viewed, _, _, _ = runs
    rec = json.loads(Path(viewed["path"]).read_text())
    del rec["features"]
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(rec))
    res = CliRunner().invoke(app, ["plot", "features", str(path), "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and not (tmp_path / "x.png").exists()
    assert res.stderr.strip().splitlines() == [f"error: record {rec['run_name']} has no feature view; rerun it "
                                               "with --feature-epochs (e.g. 0,1,3)"]
    res = CliRunner().invoke(app, ["plot", "features", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and res.stderr.startswith(f"error: cannot read record {tmp_path / 'missing.json'}")


def test_plot_without_subcommand_still_draws_the_folder(runs, tmp_path):
    _, _, _, _, results = runs
    res = CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out-dir", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "1 plots written to" in res.stdout
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["tiny-images__lenet__e2__sym40__acc.png"]


def test_run_feature_epochs_option(monkeypatch):
    seen = {}

    def fake_train(cfg, **kwargs):
        seen["cfg"] = cfg
        raise NLBenchError("stop here")

    monkeypatch.setattr(harness, "train", fake_train)
    res = CliRunner().invoke(app, ["run", "--dataset", "synthetic", "--feature-epochs", "3,0,1,1"])
    assert res.exit_code == 2 and seen["cfg"].record_options == {"feature_epochs": [0, 1, 3]}
    seen.clear()
    CliRunner().invoke(app, ["run", "--dataset", "synthetic"])
    assert seen["cfg"].record_options == {}
