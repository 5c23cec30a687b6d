"""DivideMix: the GMM, co-refinement, co-guessing, sharpening, MixUp's lambda, the loss terms and the ensemble on
hand cases, the schedules, option validation, and a run through the harness that reaches the MixMatch phase."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from fixed_logits import Fixed  # tests/ is on sys.path under pytest

from nlbench.benchmark import harness
from nlbench.benchmark.harness import train
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods.dividemix import (
    Ensemble,
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
    p = gmm_clean_probability(LOSSES)
    assert p.dtype == torch.float32 and p.shape == (10,)
    assert torch.nonzero(p > 0.5).squeeze(1).tolist() == CLEAN
    assert p[CLEAN].min() > 0.99 and p[[1, 4, 6, 8]].max() < 0.01
    # within the clean mode the posterior falls as the loss rises
    order = torch.argsort(LOSSES[CLEAN])
    assert (p[CLEAN][order].diff() <= 0).all()


def test_gmm_hand_computed_initial_fit():
    """max_iter=0 gives the posteriors of the initial fit, the hard split at 0.5 of the normalised losses
    {0, 0.4, 0.45 | 0.55, 0.6, 1}: means 0.85/3 and 2.15/3, equal variances (sum of squared deviations / 3 +
    5e-4) and weights 1/2, so p(clean | x) = sigmoid(((x - m_hi)^2 - (x - m_lo)^2) / (2 var))."""
    x = torch.tensor([0.0, 0.4, 0.45, 0.55, 0.6, 1.0], dtype=torch.float64)
    m_lo, m_hi = 0.85 / 3, 2.15 / 3
    var = sum((v - m_lo) ** 2 for v in (0.0, 0.4, 0.45)) / 3 + 5e-4
    expected = [1 / (1 + math.exp(-((v - m_hi) ** 2 - (v - m_lo) ** 2) / (2 * var))) for v in x.tolist()]
    p = gmm_clean_probability(x * 7 + 3, max_iter=0)
    assert p.tolist() == pytest.approx(expected, abs=1e-6)
    assert 0.6 < p[2] < 0.65  # 0.629: an intermediate posterior, not 0/1
    # EM keeps the symmetry of the data: p(x) + p(1 - x) = 1, decreasing in the loss
    p = gmm_clean_probability(x)
    assert (p + p.flip(0)).tolist() == pytest.approx([1.0] * 6, abs=1e-6)
    assert (p.diff() < 0).all() and p[2] > 0.5 > p[3]


def test_gmm_deterministic_and_scale_invariant():
    torch.manual_seed(0)
    a = gmm_clean_probability(LOSSES)
    torch.manual_seed(1)
    assert torch.equal(gmm_clean_probability(LOSSES), a)
    assert torch.allclose(gmm_clean_probability(LOSSES * 3 + 2), a, atol=1e-6)  # min-max normalisation


def test_gmm_degenerate_inputs():
    p = gmm_clean_probability(torch.full((5,), 0.7))
    assert torch.equal(p, torch.ones(5))
    assert torch.equal(gmm_clean_probability(torch.tensor([1.0])), torch.ones(1))
    assert gmm_clean_probability(torch.zeros(0)).shape == (0,)
    p = gmm_clean_probability(torch.tensor([0.0, 0.0, 0.0, 1.0]))  # one outlier: finite, outlier noisy
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
    out = co_guess(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([[0.1, 0.3, 0.6]]), 0.5)
    assert out[0].tolist() == pytest.approx([9 / 34, 16 / 34, 9 / 34])


def test_mix_lambda_at_least_half():
    rng = np.random.default_rng(0)
    lams = [mix_lambda(rng, 4.0) for _ in range(500)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert 0.6 < float(np.mean(lams)) < 0.7  # E max(l, 1-l) for Beta(4, 4) is 1/2 + 35/256 = 0.637
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    assert [mix_lambda(rng_a, 4.0) for _ in range(5)] == [mix_lambda(rng_b, 4.0) for _ in range(5)]


def test_semi_loss_hand_case():
    """Uniform logits over 2 classes: softmax = [0.5, 0.5], Lx = -sum t log 0.5 = log 2, Lu = mean((0.5 - t)^2),
    Lreg = 0; a batch without labelled (unlabelled) rows has Lx (Lu) = 0."""
    logits = torch.zeros(3, 2)
    targets = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5]])
    lx, lu, reg = semi_loss(logits, targets, torch.tensor([True, False, False]))
    assert lx.item() == pytest.approx(math.log(2))
    assert lu.item() == pytest.approx((0.16 + 0.16 + 0 + 0) / 4)
    assert reg.item() == pytest.approx(0.0, abs=1e-7)
    lx, lu, _ = semi_loss(logits, targets, torch.zeros(3, dtype=torch.bool))
    assert lx.item() == 0.0 and lu.item() == pytest.approx((0.25 + 0.25 + 0.16 + 0.16) / 6)
    lx, lu, _ = semi_loss(logits, targets, torch.ones(3, dtype=torch.bool))
    assert lx.item() == pytest.approx(math.log(2)) and lu.item() == 0.0
    # all rows predict class 0 with p = 0.8: Lreg = 0.5 log(0.5 / 0.8) + 0.5 log(0.5 / 0.2)
    logits = torch.tensor([[math.log(4.0), 0.0]] * 2)
    _, _, reg = semi_loss(logits, targets[:2], torch.ones(2, dtype=torch.bool))
    assert reg.item() == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2), rel=1e-5)


def test_ensemble_is_log_mean_softmax():
    # net1: softmax [0.8, 0.2]; net2: [0.2, 0.8] (row 0) -> mean [0.5, 0.5]; row 1: [0.8, 0.2] and [0.6, 0.4]
    net1 = Fixed([[math.log(4.0), 0.0], [math.log(4.0), 0.0]])
    net2 = Fixed([[0.0, math.log(4.0)], [math.log(1.5), 0.0]])
    out = Ensemble(net1, net2)(torch.zeros(2, 1))
    assert out.exp().tolist()[0] == pytest.approx([0.5, 0.5])
    assert out.exp().tolist()[1] == pytest.approx([0.7, 0.3])
    # the argmax follows the mean probability, not the summed logits (the official code's ensemble):
    # p1 = [0.9, 0.1, 0], p2 = [0.01, 0.3, 0.69]: mean [0.455, 0.2, 0.345] -> class 0; the logit sum (the
    # geometric mean) favours class 1
    net1, net2 = Fixed([[math.log(0.9), math.log(0.1), math.log(1e-6)]]), Fixed([[math.log(p) for p in
                                                                               (0.01, 0.3, 0.69)]])
    out = Ensemble(net1, net2)(torch.zeros(1, 1))
    assert out.exp()[0].tolist() == pytest.approx([0.455, 0.2, 0.345], abs=1e-6)
    assert out.argmax(1).item() == 0 and (net1.logits + net2.logits).argmax(1).item() == 1


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
        create_method("dividemix", alpha=0)
    m = create_method("dividemix")
    assert m.options()["lambda_u"] == 25.0 and m.options()["p_threshold"] == 0.5
    assert m.options()["temperature"] == 0.5 and m.options()["alpha"] == 4.0 and m.options()["penalty"] is False


def make_ctx(net1, net2, train_x, train_y, *, epochs=3, num_classes=2):
    return MethodContext(model=net1, meta_x=torch.zeros(0, 2), meta_y=torch.zeros(0, dtype=torch.long),
                         num_train=len(train_y), num_classes=num_classes, batch_size=len(train_y),
                         device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), prep=lambda x: x,
                         autocast=contextlib.nullcontext, train_x=train_x, train_y=train_y, epochs=epochs,
                         steps_per_epoch=1, model_factory=lambda k: net2)


def test_crop_flip_needs_images():
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    m = create_method("dividemix", views="crop-flip")
    with pytest.raises(NLBenchError):
        m.setup(make_ctx(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), x, y))


def test_step_all_labelled_or_all_unlabelled_is_finite():
    torch.manual_seed(0)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    net1, net2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    m = create_method("dividemix", warmup=1)
    m.setup(make_ctx(net1, net2, x, y))
    batch = Batch(x, y, torch.arange(6), 0.1, 0, 1)
    warm = m.step(batch, net1).loss  # warm-up: CE of both nets
    ce = torch.nn.functional.cross_entropy
    assert warm.item() == pytest.approx((ce(net1(x), y) + ce(net2(x), y)).item(), rel=1e-6)
    m.on_epoch_start(2, net1)
    assert m.gmm_epochs == [2] and m.prob1.shape == (6,)
    for prob in (torch.ones(6), torch.zeros(6)):
        m.prob1 = m.prob2 = prob
        loss = m.step(Batch(x, y, torch.arange(6), 0.1, 5, 2), net1).loss
        assert torch.isfinite(loss)
        loss.backward()
        assert net1.weight.grad is not None and net2.weight.grad is not None
        net1.zero_grad(), net2.zero_grad()


def test_harness_run_reaches_mixmatch(monkeypatch):
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
    assert all(math.isfinite(h["train_loss"]) for h in record["history"])


def test_each_network_trains_on_its_peers_division():
    """Net 1's mixture says all clean, net 2's all noisy: net 1 (trained on net 2's division) sees only unlabelled
    samples, whose only term is lambda_u * Lu = 0 here, so it gets no gradient; net 2 sees only labelled ones."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    net1, net2 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    m = create_method("dividemix", warmup=1, lambda_u=0.0, lambda_r=0.0)
    m.setup(make_ctx(net1, net2, x, y))
    m.prob1, m.prob2 = torch.ones(6), torch.zeros(6)
    m.step(Batch(x, y, torch.arange(6), 0.1, 5, 2), net1).loss.backward()
    assert net1.weight.grad.abs().max().item() == 0.0
    assert net2.weight.grad.abs().max().item() > 0.0
