"""ELR (Liu et al. 2020): the target update and the regularised loss on hand-computed cases, the official clamp, the
per-sample targets inside a step, and the options."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from fixed_logits import Fixed  # tests/ is on sys.path under pytest

from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods.elr import elr_loss


def test_elr_loss_and_target_update_by_hand():
    # logits log[3, 1]: p = [0.75, 0.25] (inside the clamp); targets start at 0
    logits = torch.log(torch.tensor([[3.0, 1.0]]))
    y = torch.tensor([1])
    loss, new = elr_loss(logits, y, torch.zeros(1, 2), beta=0.7, lam=3.0)
    # t = 0.7 * 0 + 0.3 * p / sum p = [0.225, 0.075]; <p, t> = 0.75 * 0.225 + 0.25 * 0.075 = 0.1875
    torch.testing.assert_close(new, torch.tensor([[0.225, 0.075]]))
    assert loss.item() == pytest.approx(-math.log(0.25) + 3.0 * math.log(1 - 0.1875), rel=1e-6)
    # a second visit averages in the old target
    _, again = elr_loss(logits, y, new, beta=0.7, lam=3.0)
    torch.testing.assert_close(again, 0.7 * new + 0.3 * torch.tensor([[0.75, 0.25]]))


def test_elr_regulariser_pulls_towards_the_target():
    """The gradient of the regulariser raises the probability of the class the target favours."""
    logits = torch.zeros(1, 3, requires_grad=True)
    target = torch.tensor([[0.9, 0.05, 0.05]])
    loss, _ = elr_loss(logits, torch.tensor([1]), target, beta=1.0 - 1e-9, lam=1.0)
    ce_only = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    g_total, = torch.autograd.grad(loss, logits)
    g_ce, = torch.autograd.grad(ce_only, logits)
    assert (g_total - g_ce)[0, 0] < 0  # descending the loss raises the logit of class 0


def test_elr_step_keeps_per_sample_targets():
    m = create_method("elr")

    class Ctx:
        num_train, num_classes, device = 5, 2, torch.device("cpu")

    m.setup(Ctx)
    model = torch.nn.Linear(2, 2)
    out = m.step(Batch(torch.randn(2, 2), torch.tensor([0, 1]), torch.tensor([3, 1]), 0.1, 0, 1), model)
    assert torch.isfinite(out.loss)
    assert m.targets[[0, 2, 4]].abs().sum() == 0 and (m.targets[[1, 3]].sum(1) - 0.3).abs().max() < 1e-6


def setup_elr(model, num_train=4, num_classes=2, **opts):
    method = create_method("elr", **opts)
    method.setup(MethodContext(model=model, meta_x=torch.zeros(0, num_classes), meta_y=torch.zeros(0, dtype=torch.long),
                               num_train=num_train, num_classes=num_classes, batch_size=2,
                               device=torch.device("cpu"), generator=torch.Generator(), prep=lambda x: x,
                               autocast=contextlib.nullcontext))
    return method


def test_targets_and_loss_over_two_visits():
    # sample 2: p = (1/2, 1/2), label 0; sample 0: p = (3/4, 1/4), label 1
    net = Fixed([[0.0, 0.0], [math.log(3.0), 0.0]])
    method = setup_elr(net)
    batch = Batch(torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([2, 0]), 0.1, 0, 1)
    ce = (math.log(2) + math.log(4)) / 2
    # first visit: t = 0.3 p; <p, t> = 0.3 * (1/4 + 1/4) = 0.15 and 0.3 * (9/16 + 1/16) = 0.1875
    out = method.step(batch, net)
    assert out.loss.item() == pytest.approx(ce + 3 * (math.log(0.85) + math.log(0.8125)) / 2, rel=1e-6)
    assert torch.allclose(method.targets, torch.tensor([[0.225, 0.075], [0, 0], [0.15, 0.15], [0, 0]]))
    # second visit: t = 0.7 * 0.3 p + 0.3 p = 0.51 p; <p, t> = 0.51 * 0.5 = 0.255 and 0.51 * 0.625 = 0.31875
    out = method.step(batch, net)
    # (CE and the regulariser nearly cancel here: float32 rounding of the two terms, not of their difference)
    assert out.loss.item() == pytest.approx(ce + 3 * (math.log(0.745) + math.log(0.68125)) / 2, abs=1e-6)
    assert torch.allclose(method.targets, torch.tensor([[0.3825, 0.1275], [0, 0], [0.255, 0.255], [0, 0]]))
    assert out.weights is None


def test_gradient_flows_through_p_not_the_target():
    logits = torch.tensor([[1.0, -0.5, 0.2]], requires_grad=True)
    t = torch.tensor([[0.2, 0.3, 0.1]])
    loss, new = elr_loss(logits, torch.tensor([2]), t, beta=0.5, lam=2.0)
    assert not new.requires_grad
    # the same loss with the updated target held constant
    p = logits.softmax(1)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([2])) + 2.0 * torch.log(1 - (new * p).sum())
    g, = torch.autograd.grad(loss, logits)
    g_ref, = torch.autograd.grad(ref, logits)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g, g_ref, atol=1e-6)
    assert torch.allclose(new, 0.5 * t + 0.5 * p.detach(), atol=1e-7)


def test_official_clamp_of_saturated_softmax():
    logits = torch.tensor([[40.0, 0.0, 0.0]], requires_grad=True)
    loss, new = elr_loss(logits, torch.tensor([1]), torch.zeros(1, 3), beta=0.7, lam=3.0)
    clamped = torch.tensor([1 - 1e-4, 1e-4, 1e-4])
    assert torch.allclose(new[0], 0.3 * clamped / clamped.sum(), atol=1e-8)
    inner = (new[0] * clamped).sum().item()
    assert loss.item() == pytest.approx(40.0 + 3 * math.log(1 - inner), rel=1e-5)  # CE ~ 40 (p_1 = e^-40)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_defaults_and_options_validation():
    assert create_method("elr").options() == {"beta": 0.7, "lam": 3.0}
    assert create_method("elr", beta=0.9, lam=7).options() == {"beta": 0.9, "lam": 7.0}
    for opts in ({"beta": 1.0}, {"beta": -0.1}, {"lam": -1}, {"lam": 1e4}, {"lam": float("nan")}, {"lambda": 3}):
        with pytest.raises(NLBenchError):
            create_method("elr", **opts)
