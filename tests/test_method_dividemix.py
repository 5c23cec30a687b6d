"""DivideMix: the GMM, co-refinement, co-guessing, sharpening, MixUp's lambda, the loss terms and the ensemble on
hand cases, the schedules, option validation, and a run through the harness that reaches the MixMatch phase.
The step-by-step comparison with the official code is in tests/test_dividemix_official.py."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from fixed_logits import Fixed  # tests/ is on sys.path under pytest

from nlbench.benchmark import harness
from nlbench.benchmark.augment import random_crop_flip
from nlbench.benchmark.harness import train
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods.dividemix import (
    Ensemble,
    batch_count,
    co_guess,
    gmm_clean_probability,
    mix_lambda,
    rampup_weight,
    refine_labels,
    resolve_rampup,
    resolve_warmup,
    semi_loss,
    sharpen,
)
from tests.test_methods_all import tiny_config

LOSSES = torch.tensor([0.05, 2.0, 0.1, 0.0, 1.9, 0.15, 2.1, 0.08, 1.95, 0.12])
CLEAN = [0, 2, 3, 5, 7, 9]


def test_gmm_bimodal_split_and_ordering():
    p = gmm_clean_probability(LOSSES, random_state=0)
    assert p.dtype == torch.float32 and p.shape == (10,)
    assert torch.nonzero(p > 0.5).squeeze(1).tolist() == CLEAN
    assert p[CLEAN].min() > 0.99 and p[[1, 4, 6, 8]].max() < 0.01
    # within the clean mode the posterior falls as the loss rises
    order = torch.argsort(LOSSES[CLEAN])
    assert (p[CLEAN][order].diff() <= 0).all()


def test_gmm_deterministic_given_its_seed_and_scale_invariant():
    torch.manual_seed(0)
    np.random.seed(0)
    a = gmm_clean_probability(LOSSES, random_state=3)
    torch.manual_seed(1)
    np.random.seed(1)
    assert torch.equal(gmm_clean_probability(LOSSES, random_state=3), a)  # no global RNG
    assert torch.allclose(gmm_clean_probability(LOSSES * 3 + 2, random_state=3), a, atol=1e-5)  # min-max


def test_gmm_degenerate_inputs():
    p = gmm_clean_probability(torch.full((5,), 0.7), random_state=0)
    assert torch.equal(p, torch.ones(5))
    assert torch.equal(gmm_clean_probability(torch.tensor([1.0]), random_state=0), torch.ones(1))
    assert gmm_clean_probability(torch.zeros(0), random_state=0).shape == (0,)
    p = gmm_clean_probability(torch.tensor([0.0, 0.0, 0.0, 1.0]), random_state=0)  # one outlier: noisy
    assert torch.isfinite(p).all() and p[3] < 0.5 < p[0]


def test_sharpen_and_co_refinement_hand_case():
    # sharpen([0.6, 0.4], 0.5) = [0.36, 0.16] / 0.52
    assert sharpen(torch.tensor([[0.6, 0.4]]), 0.5).tolist()[0] == pytest.approx([9 / 13, 4 / 13])
    # a tiny temperature stays finite: [0.1] * 10 and T = 0.01 would give 1e-100 / 1e-99 in float32 powers
    flat = sharpen(torch.full((1, 10), 0.1), 0.01)
    assert flat[0].tolist() == pytest.approx([0.1] * 10)
    assert sharpen(torch.tensor([[0.3, 0.7, 0.0]]), 0.01)[0].tolist() == pytest.approx([0.0, 1.0, 0.0])
    # w = 0.5, y = 0, p_own = [0.2, 0.8]: 0.5 [1, 0] + 0.5 [0.2, 0.8] = [0.6, 0.4] -> [9/13, 4/13]
    # w = 1 keeps the label; w = 0 sharpens the prediction: [0.25, 0.75] -> [1/10, 9/10]
    out = refine_labels(torch.tensor([[0.2, 0.8], [0.3, 0.7], [0.25, 0.75]]), torch.tensor([0, 1, 0]),
                        torch.tensor([0.5, 1.0, 0.0]), 0.5)
    assert out[0].tolist() == pytest.approx([9 / 13, 4 / 13])
    assert out[1].tolist() == pytest.approx([0.0, 1.0])
    assert out[2].tolist() == pytest.approx([0.1, 0.9])


def test_co_guess_hand_case():
    # mean of [0.5, 0.5, 0] and [0.1, 0.3, 0.6] = [0.3, 0.4, 0.3]; squared / 0.34
    out = co_guess([torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.1, 0.3, 0.6]])], 0.5)
    assert out[0].tolist() == pytest.approx([9 / 34, 16 / 34, 9 / 34])
    # four predictions (two networks, two views): the mean of all four
    ps = [torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.1, 0.3, 0.6]])] * 2
    assert co_guess(ps, 0.5)[0].tolist() == pytest.approx([9 / 34, 16 / 34, 9 / 34])


def test_batch_count():
    # ceil(n / b) batches, less a trailing batch of one sample (BatchNorm)
    assert [batch_count(n, 4) for n in (0, 1, 2, 3, 4, 5, 6, 9, 10)] == [0, 0, 1, 1, 1, 1, 2, 2, 3]


def test_mix_lambda_at_least_half():
    rng = np.random.default_rng(0)
    lams = [mix_lambda(rng, 4.0) for _ in range(500)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert 0.6 < float(np.mean(lams)) < 0.7  # E max(l, 1-l) for Beta(4, 4) is 1/2 + 35/256 = 0.637
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [mix_lambda(rng_a, 4.0) for _ in range(5)] == [mix_lambda(rng_b, 4.0) for _ in range(5)]


def test_semi_loss_hand_case():
    """Uniform logits over 2 classes: softmax = [0.5, 0.5], Lx = -sum t log 0.5 = log 2, Lu = mean((0.5 - t)^2),
    Lreg = 0; a batch without unlabelled rows has Lu = 0."""
    logits = torch.zeros(3, 2)
    targets = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
    lx, lu, reg = semi_loss(logits, targets, 1)
    assert lx.item() == pytest.approx(math.log(2))
    assert lu.item() == pytest.approx((0.16 + 0.16 + 0 + 0) / 4)
    assert reg.item() == pytest.approx(0.0, abs=1e-7)
    lx, lu, _ = semi_loss(logits, targets, 3)
    assert lx.item() == pytest.approx(math.log(2)) and lu.item() == 0.0
    # all rows predict class 0 with p = 0.8: Lreg = 0.5 log(0.5 / 0.8) + 0.5 log(0.5 / 0.2)
    logits = torch.tensor([[math.log(4.0), 0.0]] * 2)
    _, _, reg = semi_loss(logits, targets[:2], 2)
    assert reg.item() == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2), rel=1e-5)


def test_ensemble_sums_logits():
    """The official ``test`` predicts the argmax of outputs1 + outputs2 (logits), which can differ from the
    argmax of the mean softmax: p1 = [0.9, 0.1, 1e-6], p2 = [0.01, 0.3, 0.69] -> mean softmax favours class 0,
    the logit sum (geometric mean) class 1."""
    net1 = Fixed([[math.log(0.9), math.log(0.1), math.log(1e-6)]])
    net2 = Fixed([[math.log(p) for p in (0.01, 0.3, 0.69)]])
    out = Ensemble(net1, net2)(torch.zeros(1, 1))
    assert torch.allclose(out, net1.logits + net2.logits)
    assert out.argmax(1).item() == 1
    assert (net1.logits.softmax(1) + net2.logits.softmax(1)).argmax(1).item() == 0


@pytest.mark.parametrize(("warmup", "epochs", "expected"), [
    (None, 300, 10), (None, 100, 10), (None, 30, 3), (None, 3, 1), (None, 2, 1), (None, 1, 1),
    (30, 300, 30), (5, 3, 2), (1, 1, 1),
])
def test_resolve_warmup(warmup, epochs, expected):
    assert resolve_warmup(warmup, epochs) == expected


@pytest.mark.parametrize(("rampup", "epochs", "warmup", "expected"), [
    (None, 300, 10, 16), (None, 30, 3, 13), (None, 3, 1, 1), (None, 2, 1, 1), (40, 30, 3, 27), (4, 30, 3, 4),
])
def test_resolve_rampup(rampup, epochs, warmup, expected):
    assert resolve_rampup(rampup, epochs, warmup) == expected


def test_rampup_weight():
    assert rampup_weight(2.5, 3, 13) == 0.0
    assert rampup_weight(3.0, 3, 13) == 0.0
    assert rampup_weight(3 + 6.5, 3, 13) == pytest.approx(0.5)
    assert rampup_weight(30, 3, 13) == 1.0


def test_options_validation():
    with pytest.raises(NLBenchError):
        create_method("dividemix", p_threshold=1.0)
    with pytest.raises(NLBenchError):
        create_method("dividemix", warmup=0)
    with pytest.raises(NLBenchError):
        create_method("dividemix", views="mixup")
    with pytest.raises(NLBenchError):
        create_method("dividemix", views="same")  # the old name: the harness's batch is no longer used
    with pytest.raises(NLBenchError):
        create_method("dividemix", alpha=0)
    m = create_method("dividemix")
    assert m.options()["lambda_u"] == 25.0 and m.options()["p_threshold"] == 0.5 and m.options()["views"] == "auto"
    assert m.options()["temperature"] == 0.5 and m.options()["alpha"] == 4.0 and m.options()["penalty"] is False


def make_ctx(net1, net2, train_x, train_y, *, epochs=3, num_classes=2, batch_size=None, prep=lambda x: x,
             augment=False):
    return MethodContext(model=net1, meta_x=torch.zeros(0, 2), meta_y=torch.zeros(0, dtype=torch.long),
                         num_train=len(train_y), num_classes=num_classes,
                         batch_size=batch_size or len(train_y), device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(0), prep=prep,
                         autocast=contextlib.nullcontext, train_x=train_x, train_y=train_y, epochs=epochs,
                         steps_per_epoch=1, model_factory=lambda k: net2, augment=augment)


def test_crop_flip_needs_images():
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    m = create_method("dividemix", views="crop-flip")
    with pytest.raises(NLBenchError):
        m.setup(make_ctx(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), x, y))


def test_views_auto_follows_the_runs_augmentation():
    """``views="auto"`` crop-flips the method's own batches iff the run augments its batches (``--augment``); the
    two views of a sample are then independent draws."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8, generator=g), torch.tensor([0, 1] * 4)

    def prep(v):
        return v.float() / 255

    def net():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 2))

    for views, harness_augments, expected in [("auto", False, False), ("auto", True, True),
                                              ("none", True, False), ("crop-flip", False, True)]:
        net1 = net()
        m = create_method("dividemix", warmup=1, views=views)
        m.setup(make_ctx(net1, net(), x, y, batch_size=4, prep=prep, augment=harness_augments))
        m.on_epoch_start(1, net1)
        bx = random_crop_flip(x, g) if harness_augments else x
        m.step(Batch(prep(bx), y, torch.arange(8), 0.1, 0, 1), net1)
        assert m.augment is expected and m.options()["augment_used"] is expected
        v1, v2 = m._views(torch.arange(8))
        assert torch.equal(v1, v2) is not expected
        assert torch.equal(v1, prep(x)) is not expected


def mixmatch_method(monkeypatch, prob1, prob2, *, batch_size=4, **opts):
    """A DivideMix on 8 random 2-d samples, after its warm-up, whose mixtures give ``prob1`` and ``prob2``."""
    from nlbench.methods import dividemix

    fits = iter([torch.as_tensor(prob1, dtype=torch.float32), torch.as_tensor(prob2, dtype=torch.float32)])
    monkeypatch.setattr(dividemix, "gmm_clean_probability", lambda loss, random_state: next(fits))
    torch.manual_seed(0)
    x, y = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    net1, net2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    m = create_method("dividemix", warmup=1, **opts)
    m.setup(make_ctx(net1, net2, x, y, batch_size=batch_size))
    m.on_epoch_start(2, net1)
    return m, x, y, net1, net2


def test_division_all_labelled_or_none(monkeypatch):
    # all labelled by both mixtures: no unlabelled rows, Lu = 0; ceil(8 / 4) steps per network
    m, x, y, net1, net2 = mixmatch_method(monkeypatch, torch.ones(8), torch.ones(8))
    assert m.gmm_epochs == [2] and m.epoch_steps(2) == 4
    assert m.epoch_log() == {"labelled_share": 1.0, "labelled_share_net1": 1.0, "labelled_share_net2": 1.0}
    for _ in range(4):
        loss = m.step(Batch(x, y, torch.arange(8), 0.1, 5, 2), net1).loss
        assert torch.isfinite(loss)
    # none labelled: no step for either network (official: a labelled loader without batches); the harness's
    # one step is a no-op without any gradient
    m, x, y, net1, net2 = mixmatch_method(monkeypatch, torch.zeros(8), torch.zeros(8))
    assert m.epoch_steps(2) == 0 and m.epoch_log()["labelled_share"] == 0.0
    loss = m.step(Batch(x, y, torch.arange(8), 0.1, 5, 2), net1).loss
    loss.backward()
    assert loss.item() == 0.0 and net1.weight.grad is None and net2.weight.grad is None


def test_harness_run_reaches_mixmatch_and_logs_the_division(monkeypatch):
    made = []
    real = harness.create_method

    def capture(name, **kw):
        made.append(real(name, **kw))
        return made[-1]

    monkeypatch.setattr(harness, "create_method", capture)
    record = train(tiny_config("dividemix", epochs=3, method_options={"warmup": 1}), device="cpu")
    assert record["status"] == "ok"
    method = made[0]
    assert method.gmm_epochs == [2, 3]
    assert method.prob1.shape == (record["sizes"]["train"],)
    assert ((method.prob1 >= 0) & (method.prob1 <= 1)).all()
    assert record["method_options"]["warmup_used"] == 1 and record["method_options"]["rampup_used"] == 1
    assert record["method_options"]["augment_used"] is False  # vector data
    assert all(math.isfinite(h["train_loss"]) for h in record["history"])
    # the labelled share: not logged in the warm-up (no division), a share afterwards, the mean of the two networks'
    first, *rest = record["history"]
    assert not {"labelled_share", "labelled_share_net1", "labelled_share_net2"} & set(first)
    for h in rest:
        assert 0 < h["labelled_share"] <= 1
        assert h["labelled_share"] == pytest.approx((h["labelled_share_net1"] + h["labelled_share_net2"]) / 2)
    assert rest[-1]["labelled_share_net1"] == pytest.approx(float((method.prob1 > 0.5).float().mean()))


def test_each_network_trains_on_its_peers_division(monkeypatch):
    """Net 1's mixture says all clean, net 2's all noisy: net 1 (trained on net 2's division) has no labelled
    sample and makes no step; net 2 trains on everything, labelled; net 1 never gets a gradient."""
    m, x, y, net1, net2 = mixmatch_method(monkeypatch, torch.ones(8), torch.zeros(8))
    assert m.epoch_steps(2) == 2
    assert m.epoch_log()["labelled_share_net1"] == 1.0 and m.epoch_log()["labelled_share_net2"] == 0.0
    for _ in range(2):
        net1.zero_grad(set_to_none=True), net2.zero_grad(set_to_none=True)
        m.step(Batch(x, y, torch.arange(8), 0.1, 5, 2), net1).loss.backward()
        assert net1.weight.grad is None and net2.weight.grad.abs().max().item() > 0.0
