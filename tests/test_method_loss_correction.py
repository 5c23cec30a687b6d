"""Loss correction (``forward``, ``glc``): the estimators and the corrected loss on hand cases, and the switch from
cross-entropy to the corrected loss inside the harness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import nlbench.benchmark.harness as harness
import nlbench.methods.forward as forward_mod
import nlbench.methods.glc as glc_mod
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods.loss_correction import (
    anchor_transition,
    class_mean_transition,
    forward_corrected_loss,
    resolve_warmup,
)
from tests.test_methods_all import tiny_config

# 5 samples, 3 classes. Ascending order of each column (sample indices):
#   class 0: 0.1 (3), 0.2 (2), 0.3 (4), 0.6 (1), 0.9 (0)
#   class 1: 0.05 (0), 0.1 (3), 0.2 (4), 0.3 (1), 0.7 (2)
#   class 2: 0.05 (0), 0.1 (1), 0.1 (2), 0.5 (4), 0.8 (3)
PROBS = torch.tensor([[0.90, 0.05, 0.05],
                      [0.60, 0.30, 0.10],
                      [0.20, 0.70, 0.10],
                      [0.10, 0.10, 0.80],
                      [0.30, 0.20, 0.50]])


@pytest.mark.parametrize(("percentile", "rows"), [
    (100, [0, 2, 3]),  # the argmax of every column
    (97, [0, 2, 3]),   # rank ceil(0.97 * 4) = 4: with 5 samples still the argmax
    (75, [1, 1, 4]),   # rank 3: the second largest of every column
    (50, [4, 4, 2]),   # rank 2; class 2's tie 0.1 (1), 0.1 (2) is broken by sample order: 1 is rank 1
    (0, [3, 0, 0]),    # rank 0: the smallest
])
def test_anchor_transition_picks_the_percentile_rows(percentile, rows):
    T = anchor_transition(PROBS, percentile)
    assert T.dtype == torch.float32 and T.shape == (3, 3)
    assert torch.equal(T, PROBS[rows])


def test_anchor_transition_97th_percentile_of_101_samples():
    """p(0 | x) of sample s is s / 100 (shuffled): the 97th percentile is the sample with 0.97, not the max."""
    perm = torch.randperm(101, generator=torch.Generator().manual_seed(0))
    p0 = perm.float() / 100
    probs = torch.stack([p0, 1 - p0], dim=1)
    T = anchor_transition(probs, 97)
    assert T[0].tolist() == pytest.approx([0.97, 0.03])
    assert T[1].tolist() == pytest.approx([0.03, 0.97])  # class 1's column is 1 - p0: its 97th percentile is 0.97
    assert anchor_transition(probs, 100)[0].tolist() == pytest.approx([1.0, 0.0])


def test_class_mean_transition():
    probs = torch.tensor([[0.8, 0.2, 0.0],
                          [0.6, 0.4, 0.0],
                          [0.1, 0.5, 0.4],
                          [0.3, 0.3, 0.4],
                          [0.2, 0.8, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.tensor([[0.7, 0.3, 0.0, 0.0],                  # mean of samples 0, 1
                             [0.2, 1.6 / 3, 0.8 / 3, 0.0],          # mean of samples 2, 3, 4
                             [0.0, 0.0, 1.0, 0.0],                  # no trusted sample: identity row
                             [0.0, 0.0, 0.0, 1.0]])
    # (the 4-class probs above are padded: column 3 is a class no sample is predicted as)
    C = class_mean_transition(F.pad(probs, (0, 1)), labels, 4)
    assert C.shape == (4, 4) and C.dtype == torch.float32
    assert torch.allclose(C, expected, atol=1e-6)
    with pytest.raises(ValueError):
        class_mean_transition(probs, labels, 4)


def test_forward_corrected_loss_identity_is_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [10.0, -10.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(forward_corrected_loss(logits, y, torch.eye(3), reduction="none"), ce, rtol=1e-6)
    assert forward_corrected_loss(logits, y, torch.eye(3)).item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_forward_corrected_loss_hand_value():
    """softmax([0, ln 3]) = [1/4, 3/4]; with T = [[.8, .2], [.3, .7]], p @ T = [.425, .575]."""
    logits = torch.tensor([[0.0, math.log(3.0)]] * 2, requires_grad=True)
    T = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    losses = forward_corrected_loss(logits, torch.tensor([0, 1]), T, reduction="none")
    assert losses.tolist() == pytest.approx([-math.log(0.425), -math.log(0.575)], rel=1e-6)
    # d/dz_k of -log(sum_i p_i T_iy) = p_k - p_k T_ky / (p @ T)_y; for y = 0, k = 0: 1/4 - (1/4 * .8) / .425
    losses.sum().backward()
    assert logits.grad[0, 0].item() == pytest.approx(0.25 - 0.2 / 0.425, rel=1e-5)


def test_forward_corrected_loss_is_finite_for_zero_columns_and_bf16():
    logits = torch.tensor([[50.0, -50.0], [0.0, 0.0]], requires_grad=True)
    T = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # nobody is ever labelled 1
    loss = forward_corrected_loss(logits, torch.tensor([1, 1]), T)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
    out = forward_corrected_loss(logits.detach().bfloat16(), torch.tensor([0, 0]), torch.eye(2))
    assert out.dtype == torch.float32


def test_resolve_warmup():
    assert [resolve_warmup(None, e) for e in (1, 2, 3, 10, 11, 30, 120)] == [0, 1, 1, 1, 2, 3, 12]
    assert resolve_warmup(5, 2) == 1 and resolve_warmup(5, 30) == 5


def test_options_validation_and_records():
    assert create_method("forward").options() == {"warmup": None, "reinit": False, "percentile": 97.0}
    assert create_method("glc", warmup="4").options() == {"warmup": 4, "reinit": False}
    for name, bad in [("forward", {"percentile": 101}), ("forward", {"percentile": -1}), ("forward", {"warmup": 0}),
                      ("glc", {"warmup": 1.5}), ("glc", {"percentile": 97}), ("glc", {"reinit": "maybe"})]:
        with pytest.raises(NLBenchError):
            create_method(name, **bad)


def _run(monkeypatch, name, **options):
    """Train the tiny 2-epoch config, returning the record, the method instance and the epochs in which the
    corrected loss was called."""
    made, calls = [], []
    real_create = harness.create_method

    def create(*a, **kw):
        made.append(real_create(*a, **kw))
        return made[-1]

    def spy(logits, targets, T, reduction="mean"):
        calls.append(len(targets))
        return forward_corrected_loss(logits, targets, T, reduction)

    monkeypatch.setattr(harness, "create_method", create)
    mod = forward_mod if name == "forward" else glc_mod
    if hasattr(mod, "forward_corrected_loss"):
        monkeypatch.setattr(mod, "forward_corrected_loss", spy)
    monkeypatch.setattr("nlbench.methods.loss_correction.forward_corrected_loss", spy)
    record = harness.train(tiny_config(name, method_options=options), device="cpu")
    return record, made[0], calls


@pytest.mark.parametrize("name", ["forward", "glc"])
def test_two_epoch_run_switches_to_the_corrected_loss(monkeypatch, name):
    record, method, calls = _run(monkeypatch, name)
    assert record["status"] == "ok" and method.warmup_epochs == 1
    # epoch 1 is cross-entropy; every step of epoch 2 (5 steps of 64, the last 56: 320 pool samples) is corrected
    assert calls == [64, 64, 64, 64, 64]
    T, c = method.T, method.ctx.num_classes
    assert c == 4 and T is not None and T.shape == (c, c) and torch.allclose(T.sum(1), torch.ones(c), atol=1e-5)
    assert (T >= 0).all()


def test_glc_step_mixes_pool_and_trusted_by_union_share(monkeypatch):
    """One corrected step by hand: a model with constant logits makes both parts known in closed form."""
    method = create_method("glc")

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.tensor([0.0, math.log(3.0)]))

        def forward(self, x):
            return self.b.expand(len(x), 2)

    meta_x, meta_y = torch.zeros(3, 4), torch.tensor([0, 0, 1])
    ctx = MethodContext(model=Const(), meta_x=meta_x, meta_y=meta_y, num_train=7, num_classes=2, batch_size=4,
                        device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), prep=lambda x: x,
                        autocast=lambda: torch.autocast("cpu", enabled=False), epochs=2)
    method.setup(ctx)
    method.on_epoch_end(1, ctx.model)
    # every meta sample predicts [1/4, 3/4]: both rows of C_hat are that
    assert torch.allclose(method.T, torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
    out = method.step(Batch(torch.zeros(2, 4), torch.tensor([0, 1]), torch.arange(2), 0.1, 0, 2), ctx.model)
    # pool: (p @ T) = [1/4, 3/4] for every sample, so the corrected losses are -ln(1/4), -ln(3/4);
    # trusted (all 3 meta samples, m = 3 < batch 4): CE of labels 0, 0, 1 = -ln(1/4), -ln(1/4), -ln(3/4)
    pool = (math.log(4) + math.log(4 / 3)) / 2
    trusted = (2 * math.log(4) + math.log(4 / 3)) / 3
    assert out.loss.item() == pytest.approx(7 / 10 * pool + 3 / 10 * trusted, rel=1e-6)


def test_glc_needs_a_meta_set():
    with pytest.raises(NLBenchError, match="meta"):
        harness.train(tiny_config("glc", meta_size=0), device="cpu")


def test_reinit_restores_the_initial_weights(monkeypatch):
    """With reinit, the first corrected epoch starts from the model's initial weights, and the record of the
    warm-up epoch still evaluates the warmed-up network."""
    seen = {}
    real_start = forward_mod.Forward.on_epoch_start
    real_setup = forward_mod.Forward.setup

    def setup(self, ctx):
        seen["init"] = [p.detach().clone() for p in ctx.model.parameters()]
        real_setup(self, ctx)

    def on_epoch_start(self, epoch, model):
        seen[f"before{epoch}"] = [p.detach().clone() for p in model.parameters()]
        real_start(self, epoch, model)
        seen[f"after{epoch}"] = [p.detach().clone() for p in model.parameters()]

    monkeypatch.setattr(forward_mod.Forward, "setup", setup)
    monkeypatch.setattr(forward_mod.Forward, "on_epoch_start", on_epoch_start)
    record = harness.train(tiny_config("forward", method_options={"reinit": True}), device="cpu")
    assert record["status"] == "ok" and record["method_options"]["reinit"] is True

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(seen[a], seen[b], strict=True))

    assert same("after1", "init") and same("after2", "init")  # epoch 1 starts from init; epoch 2 is reset to it
    assert not same("before2", "init")  # the warm-up trained it
