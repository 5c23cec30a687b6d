"""Every registered method trains on tiny synthetic data through the one harness (timm's ``test_models.py``
pattern): a new method is covered the moment it is registered."""

from __future__ import annotations

import math

import pytest
import torch

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.methods import Batch, create_method, get_method, list_methods

TELEMETRY = {"w_clean_mean", "w_noisy_mean", "w_auroc", "w_noisy_below_0.1", "w_seen"}


def tiny_config(method: str, **kw) -> RunConfig:
    """2 epochs of the synthetic mixture: 400 samples, 40 meta, 40 validation, batch 64 (5 steps an epoch)."""
    base = dict(noise="sym40", dataset="synthetic", epochs=2, meta_size=40, val_size=40, batch_size=64,
                dataset_options={"n_train": 400, "n_test": 100})
    return RunConfig(method=method, **{**base, **kw})


@pytest.mark.parametrize("name", list_methods())
def test_method_trains_two_epochs(name, tmp_path):
    record = train(tiny_config(name), device="cpu", results_dir=tmp_path)
    assert record["status"] == "ok"
    assert record["method"] == name
    assert record["oracle"] is get_method(name).oracle
    stages = record.get("stages", 1)  # forward and glc train a CE network, then a corrected one, 2 epochs each
    assert stages == (2 if name in ("forward", "glc") else 1)
    assert [h["epoch"] for h in record["history"]] == list(range(1, 2 * stages + 1))
    for h in record["history"]:
        assert math.isfinite(h["test_acc"]) and 0 <= h["test_acc"] <= 1
        assert math.isfinite(h["val_acc"]) and 0 <= h["val_acc"] <= 1
        assert math.isfinite(h["train_loss"])
        if get_method(name).reweights:
            assert set(h) >= TELEMETRY
            assert 0 <= h["w_clean_mean"] <= 1 and 0 <= h["w_noisy_mean"] <= 1
        else:
            assert not TELEMETRY & set(h)
    assert record["final"]["epochs_done"] == 2
    assert (tmp_path / "runs" / f"{record['run_name']}.json").is_file()


def test_oracle_is_flagged():
    record = train(tiny_config("oracle"), device="cpu")
    assert record["oracle"] is True
    # it trains on exactly the truly clean part of the pool: the pool minus its flipped labels
    pool = record["sizes"]["pool"]
    assert pool == 400 - 40 - 40
    assert record["sizes"]["train"] == round(pool * (1 - record["noise_report"]["realised_rate"]))


def test_surrogate_alias_and_ablation_records():
    record = train(tiny_config("fbr", method_options={"alpha": 0.2}), device="cpu")
    assert record["method"] == "surrogate"
    assert record["method_options"]["alpha"] == 0.2
    assert record["history"][-1]["w_seen"] == record["sizes"]["train"]
    ablation = train(tiny_config("surrogate-no-shift"), device="cpu")
    assert ablation["method_options"]["row_shift"] is False


def test_gce_loss_value():
    """Uniform logits over 4 classes: p_y = 1/4, so L_q = (1 - 0.25^q) / q for every sample."""

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 4, requires_grad=True)

    for q in (0.7, 1.0):
        out = create_method("gce", q=q).step(Batch(torch.zeros(3, 2), torch.tensor([0, 1, 3]), torch.arange(3),
                                                   0.1, 0, 1), Uniform())
        assert out.loss.item() == pytest.approx((1 - 0.25 ** q) / q, rel=1e-6)
        assert out.weights is None
    assert create_method("gce").options() == {"q": 0.7}


@pytest.mark.parametrize("name", [m for m in list_methods() if get_method(m).uses_meta])
def test_every_meta_method_refuses_an_empty_meta_set(name):
    """One check in Method.setup serves every method that declares uses_meta (clean-only trains on the meta set
    itself, so the harness's empty-training-set check answers first)."""
    from nlbench.errors import NLBenchError

    expected = "has 0 training samples" if name == "clean-only" else f"method '{name}' needs a clean meta set"
    with pytest.raises(NLBenchError, match=expected):
        train(tiny_config(name, meta_size=0), device="cpu")
