"""ELR (Liu et al. 2020): the target update and the regularised loss on a hand-computed case."""

from __future__ import annotations

import math

import pytest
import torch

from nlbench.errors import NLBenchError
from nlbench.methods import Batch, create_method
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
    assert m.options() == {"beta": 0.7, "lam": 3.0}
    for bad in ({"beta": 1.0}, {"lam": -1}, {"lam": float("nan")}):
        with pytest.raises(NLBenchError):
            create_method("elr", **bad)
