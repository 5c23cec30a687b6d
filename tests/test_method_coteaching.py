"""Co-teaching (``coteaching``, ``coteaching-meta``): the schedule and the cross selection against references
derived step by step from the official code (github.com/bhanML/Co-teaching, ``main.py`` and ``loss.py``), the meta
estimate on hand cases, the flags, and runs through the harness."""

from __future__ import annotations

import contextlib
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixed_logits import Fixed  # tests/ is on sys.path under pytest

from nlbench.benchmark.harness import nominal_rate, train
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method, get_method
from nlbench.methods.coteaching import (
    TK_SHARE,
    agreement_noise_rate,
    coteaching_select,
    forget_rate_at,
    kept_count,
    resolve_tk,
)
from tests.test_methods_all import tiny_config


def official_rate_schedule(n_epoch, forget_rate, num_gradual, exponent=1.0):
    """bhanML/Co-teaching main.py, "define drop rate schedule", step by step: ones(n_epoch) * forget_rate, then the
    first num_gradual entries replaced by linspace(0, forget_rate ** exponent, num_gradual). Its training loop is
    ``for epoch in range(1, n_epoch)`` with ``rate_schedule[epoch]`` (epoch 0 only evaluates)."""
    rate_schedule = np.ones(n_epoch) * forget_rate
    rate_schedule[:num_gradual] = np.linspace(0, forget_rate ** exponent, num_gradual)
    return rate_schedule


def official_loss_coteaching(y_1, y_2, t, forget_rate):
    """bhanML/Co-teaching loss.py, ``loss_coteaching``, step by step (without the pure-ratio telemetry, which reads
    the true labels): each network's per-sample cross-entropy sorted by np.argsort, num_remember =
    int(remember_rate * len), the cross exchange, and the returned ``sum(mean CE) / num_remember``."""
    loss_1 = F.cross_entropy(y_1, t, reduction="none")
    ind_1_sorted = np.argsort(loss_1.detach().numpy(), kind="stable")
    loss_2 = F.cross_entropy(y_2, t, reduction="none")
    ind_2_sorted = np.argsort(loss_2.detach().numpy(), kind="stable")
    remember_rate = 1 - forget_rate
    num_remember = int(remember_rate * len(ind_1_sorted))
    ind_1_update = torch.as_tensor(ind_1_sorted[:num_remember])
    ind_2_update = torch.as_tensor(ind_2_sorted[:num_remember])
    loss_1_update = F.cross_entropy(y_1[ind_2_update], t[ind_2_update])
    loss_2_update = F.cross_entropy(y_2[ind_1_update], t[ind_1_update])
    return torch.sum(loss_1_update) / num_remember, torch.sum(loss_2_update) / num_remember, num_remember


class Passthrough(torch.nn.Module):
    """The input is the logits (for the meta estimate: ``meta_x`` holds logits)."""

    def forward(self, x):
        return x


def make_ctx(model, net2, *, epochs=30, noise_rate=0.4, meta_x=None, meta_y=None, num_classes=3):
    meta_x = torch.zeros(0, num_classes) if meta_x is None else meta_x
    meta_y = torch.zeros(0, dtype=torch.long) if meta_y is None else meta_y
    return MethodContext(model=model, meta_x=meta_x, meta_y=meta_y, num_train=5, num_classes=num_classes,
                         batch_size=5, device=torch.device("cpu"), generator=torch.Generator(),
                         prep=lambda x: x, autocast=contextlib.nullcontext, epochs=epochs, noise_rate=noise_rate,
                         model_factory=lambda k: net2)


def test_flags():
    # version 2: the official schedule; records of version 1 (the former schedule) are stale
    assert get_method("coteaching").version == get_method("coteaching-meta").version == 2
    assert get_method("coteaching").uses_noise_rate is True
    assert get_method("coteaching").uses_meta is False
    assert get_method("coteaching-meta").uses_noise_rate is False
    assert get_method("coteaching-meta").uses_meta is True


@pytest.mark.parametrize(("n_epoch", "tau", "tk", "exponent"), [
    (200, 0.8, 10, 1.0), (200, 0.45, 10, 1.0), (200, 0.2, 15, 1.0), (200, 0.5, 10, 0.5), (200, 0.5, 5, 2.0),
    (31, 0.8, 2, 1.0), (31, 0.8, 1, 1.0), (31, 0.3, 3, 1.0), (4, 0.8, 1, 1.0), (200, 0.7, 200, 1.0),
])
def test_schedule_is_the_official_rate_schedule(n_epoch, tau, tk, exponent):
    official = official_rate_schedule(n_epoch, tau, tk, exponent)
    # nlbench's 1-based epoch e is the official loop's index e: bit-equal entries for every trained epoch
    ours = [forget_rate_at(e, tau, tk, exponent) for e in range(1, n_epoch)]
    assert ours == official[1:].tolist()
    assert forget_rate_at(0, tau, tk, exponent) == official[0] == 0.0


def test_schedule_hand_values():
    # Tk = 10: the first trained epoch already forgets tau / 9, tau is reached at epoch 9 (not 10, not 11)
    assert forget_rate_at(1, 0.45, 10) == pytest.approx(0.05)
    assert forget_rate_at(8, 0.45, 10) == pytest.approx(0.4)
    assert forget_rate_at(9, 0.45, 10) == 0.45 and forget_rate_at(10, 0.45, 10) == 0.45
    # Tk = 1 or 2: linspace(0, tau, Tk) is [0] or [0, tau], 0 only on the untrained epoch 0
    assert forget_rate_at(1, 0.8, 1) == forget_rate_at(1, 0.8, 2) == 0.8
    assert forget_rate_at(1, 0.8, 3) == pytest.approx(0.4) and forget_rate_at(2, 0.8, 3) == 0.8
    # the exponent moves the ramp's end to tau ** c, then the rate jumps to tau at epoch Tk
    assert forget_rate_at(4, 0.25, 5, 0.5) == 0.5 and forget_rate_at(2, 0.25, 5, 0.5) == pytest.approx(0.25)
    assert forget_rate_at(5, 0.25, 5, 0.5) == 0.25


@pytest.mark.parametrize(("tk", "epochs", "expected"), [
    (None, 200, 10), (None, 199, 10), (None, 120, 6), (None, 30, 2), (None, 25, 2), (None, 21, 2), (None, 20, 1),
    (None, 3, 1), (None, 2, 1), (None, 1, 1), (5, 30, 5), (50, 30, 50), (1, 200, 1),
])
def test_resolve_tk(tk, epochs, expected):
    assert Fraction(10, 200) == TK_SHARE
    assert resolve_tk(tk, epochs) == expected


@pytest.mark.parametrize(("epochs", "expected_tk"), [(30, 2), (3, 1), (200, 10)])
def test_protocol_schedules(epochs, expected_tk):
    """The 30-epoch memorisation and 3-epoch short protocols: Tk = ceil(epochs * 10 / 200) is 2 resp. 1, so every
    epoch forgets tau (as the official code with these Tk); 200 epochs give the paper's Tk = 10."""
    method = create_method("coteaching")
    method.setup(make_ctx(Fixed(torch.zeros(5, 3)), Fixed(torch.zeros(5, 3)), epochs=epochs, noise_rate=0.8))
    assert method.tk_epochs == expected_tk
    schedule = [method.current_forget_rate(e) for e in range(1, epochs + 1)]
    official = official_rate_schedule(epochs + 1, 0.8, expected_tk)[1:].tolist()
    assert schedule == official
    if epochs <= 30:
        assert schedule == [0.8] * epochs
    else:
        assert schedule[0] == pytest.approx(0.8 / 9) and schedule[8:] == [0.8] * (epochs - 8)
    # coteaching-meta: epoch 1 forgets nothing (no estimate yet), then the official entries with its estimate
    meta = create_method("coteaching-meta")
    meta.setup(make_ctx(Fixed(torch.zeros(5, 3)), Fixed(torch.zeros(5, 3)), epochs=epochs, noise_rate=None,
                        meta_x=torch.zeros(2, 3), meta_y=torch.tensor([0, 1])))
    assert meta.current_forget_rate(1) == 0.0
    meta.tau = 0.8  # as if estimated at the end of epoch 1
    assert [meta.current_forget_rate(e) for e in range(2, epochs + 1)] == official[1:]


@pytest.mark.parametrize(("b", "rate", "k"), [(64, 0.8, 12), (32, 0.8, 6), (64, 0.4, 38), (5, 0.0, 5), (5, 0.4, 3),
                                              (10, 0.8, 1), (12, 0.4166666666666667, 6), (10, 0.9, 1),
                                              (5, 0.9, 1), (1, 0.5, 1), (3, 0.99, 1), (7, 0.5, 3)])
def test_kept_count(b, rate, k):
    # the official int((1 - r) * B): (1 - 0.8) * 10 = 1.9999999999999996 keeps 1; at least 1 (the official code
    # divides by 0 there)
    assert kept_count(b, rate) == k
    assert k == max(1, int((1 - rate) * b))


@pytest.mark.parametrize("forget_rate", [0.0, 0.8 / 9, 0.45, 0.8, 0.9])
def test_step_matches_official_loss_coteaching(forget_rate):
    """The method's two losses are the official ones times num_remember (the official code divides the mean once
    more by num_remember, a constant factor Adam ignores; nlbench's SGD takes the mean): equal values and
    gradients for each network on fixed random logits of a 64-sample batch."""
    g = torch.Generator().manual_seed(0)
    logits1, logits2 = torch.randn(64, 10, generator=g) * 2, torch.randn(64, 10, generator=g) * 2
    y = torch.randint(0, 10, (64,), generator=g)
    y_1, y_2 = logits1.clone().requires_grad_(), logits2.clone().requires_grad_()
    ref_1, ref_2, num_remember = official_loss_coteaching(y_1, y_2, y, forget_rate)
    (ref_1 * num_remember + ref_2 * num_remember).backward()
    net1, net2 = Fixed(logits1), Fixed(logits2)
    method = create_method("coteaching", forget_rate=forget_rate, tk=1)
    method.setup(make_ctx(net1, net2, epochs=30))
    out = method.step(Batch(torch.zeros(64, 1), y, torch.arange(64), 0.05, 0, 1), net1)
    assert out.loss.item() == pytest.approx((ref_1 + ref_2).item() * num_remember, rel=1e-6)
    out.loss.backward()
    assert torch.allclose(net1.logits.grad, y_1.grad, atol=1e-7)
    assert torch.allclose(net2.logits.grad, y_2.grad, atol=1e-7)
    assert int((net1.logits.grad.abs().sum(1) > 0).sum()) == num_remember == kept_count(64, forget_rate)


def test_cross_selection():
    loss1 = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7])
    loss2 = torch.tensor([0.2, 0.8, 0.4, 0.6, 0.0])
    for_1, for_2 = coteaching_select(loss1, loss2, 0.4)  # keep floor(0.6 * 5) = 3
    assert for_2.tolist() == [1, 3, 0]  # net 1's three smallest losses go to net 2
    assert for_1.tolist() == [4, 0, 2]  # net 2's three smallest go to net 1
    for_1, for_2 = coteaching_select(loss1, loss2, 0.9)  # floor(0.5) = 0: keep 1
    assert for_2.tolist() == [1] and for_1.tolist() == [4]
    for_1, for_2 = coteaching_select(loss1, loss2, 0.0)
    assert for_2.tolist() == [1, 3, 0, 4, 2] and for_1.tolist() == [4, 0, 2, 3, 1]
    # ties are broken by batch order
    for_1, for_2 = coteaching_select(torch.tensor([1.0, 0.5, 0.5, 0.5]), torch.zeros(4), 0.5)
    assert for_2.tolist() == [1, 2] and for_1.tolist() == [0, 1]


def test_step_trains_each_net_on_the_peer_selection():
    y = torch.tensor([0, 1, 2, 0, 1])
    # per-sample CE of net 1 ranks 1 < 3 < 0 < 4 < 2, of net 2 ranks 4 < 0 < 2 < 3 < 1 (logit of the label high = small)
    logits1 = torch.zeros(5, 3)
    logits2 = torch.zeros(5, 3)
    for i, (m1, m2) in enumerate(zip([1.0, 3.0, -1.0, 2.0, 0.0], [2.0, -2.0, 1.0, 0.0, 3.0], strict=True)):
        logits1[i, y[i]], logits2[i, y[i]] = m1, m2
    net1, net2 = Fixed(logits1), Fixed(logits2)
    method = create_method("coteaching", tk=10)
    method.setup(make_ctx(net1, net2, epochs=30, noise_rate=0.4))
    assert method.networks() == [net2]
    # epoch 11: r = tau = 0.4 (reached at epoch 9), keep 3; net 1 trains on net 2's {4, 0, 2}, net 2 on net 1's
    # {1, 3, 0}
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 11), net1)
    ce1 = F.cross_entropy(logits1, y, reduction="none")
    ce2 = F.cross_entropy(logits2, y, reduction="none")
    expected = ce1[[4, 0, 2]].mean() + ce2[[1, 3, 0]].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert (net1.logits.grad.abs().sum(1) > 0).tolist() == [True, False, True, False, True]
    assert (net2.logits.grad.abs().sum(1) > 0).tolist() == [True, True, False, True, False]
    # epoch 1: r = 0.4 / 9, keep int((1 - 0.0444) * 5) = 4
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 1), net1)
    assert out.loss.item() == pytest.approx((ce1[[4, 0, 2, 3]].mean() + ce2[[1, 3, 0, 4]].mean()).item(), rel=1e-6)
    # epoch 3: r = 0.4 * 3 / 9, keep int(0.8667 * 5) = 4; epoch 9: r = 0.4, keep 3
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 3), net1)
    assert out.loss.item() == pytest.approx((ce1[[4, 0, 2, 3]].mean() + ce2[[1, 3, 0, 4]].mean()).item(), rel=1e-6)
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 9), net1)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_forget_rate_option_overrides_nominal():
    method = create_method("coteaching", forget_rate=0.25)
    method.setup(make_ctx(Fixed(torch.zeros(5, 3)), Fixed(torch.zeros(5, 3)), epochs=3, noise_rate=0.4))
    assert method.current_forget_rate(2) == 0.25 and method.current_forget_rate(1) == 0.25
    assert method.options() == {"forget_rate": 0.25, "tk": None, "exponent": 1.0, "forget_rate_used": 0.25,
                                "tk_used": 1}


def test_agreement_noise_rate_hand_case():
    meta_pred, meta_y = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 1])  # a = 3/4
    pool_pred, pool_y = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 1, 2, 2])  # b = 3/5
    # (a - b) / (a - (1 - a) / (C - 1)) = 0.15 / (0.75 - 0.125)
    assert agreement_noise_rate(pool_pred, pool_y, meta_pred, meta_y, 3) == pytest.approx(0.15 / 0.625)
    # agreement above the clean accuracy: no noise; a network at chance (a = 1/3 for C = 3) or never right:
    # nothing forgotten
    assert agreement_noise_rate(pool_y, pool_y, meta_pred, meta_y, 3) == 0.0
    assert agreement_noise_rate(pool_pred, pool_y, meta_pred, meta_y + 5, 3) == 0.0
    assert agreement_noise_rate(pool_pred, pool_y + 5, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 2]), 3) == 0.0
    # never more than 1 - 1/C (beyond it the true class is no longer the likeliest label)
    assert agreement_noise_rate(pool_pred, pool_y + 5, meta_pred, meta_y, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        agreement_noise_rate(pool_pred, pool_y[:4], meta_pred, meta_y, 3)
    with pytest.raises(ValueError):
        agreement_noise_rate(pool_pred[:0], pool_y[:0], meta_pred, meta_y, 3)


def test_coteaching_meta_estimates_after_epoch_one():
    # the inputs are logits: net 1 passes them through, net 2 predicts uniform (zeros), so the argmax of the
    # averaged softmax is net 1's argmax
    meta_x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    meta_y = torch.tensor([0, 0, 1, 2])  # predicted 0, 1, 1, 2: a = 3/4
    train_x = torch.eye(3)[[0, 0, 1, 2, 2]] * 2
    train_y = torch.tensor([0, 1, 1, 0, 2])  # predicted 0, 0, 1, 2, 2: b = 3/5
    net1 = Passthrough()
    net2 = Fixed(torch.zeros(5, 3))
    method = create_method("coteaching-meta")
    ctx = make_ctx(net1, net2, epochs=30, noise_rate=None, meta_x=meta_x, meta_y=meta_y)
    ctx.train_x, ctx.train_y = train_x, train_y
    method.setup(ctx)
    assert method.tau is None and method.current_forget_rate(1) == 0.0
    method.on_epoch_end(1, net1)
    assert method.tau == pytest.approx(0.24)  # (3/4 - 3/5) / (3/4 - (1/4) / 2)
    method.on_epoch_end(2, net1)  # estimated once
    assert method.tau == pytest.approx(0.24)
    assert method.tk_epochs == 2  # ceil(30 * 10 / 200)
    assert method.current_forget_rate(1) == 0.0 and method.current_forget_rate(2) == pytest.approx(0.24)
    with pytest.raises(NLBenchError, match="meta"):
        create_method("coteaching-meta").setup(make_ctx(net1, net2, noise_rate=None))


def test_options_validation():
    for name, opts in [("coteaching", {"forget_rate": 1.0}), ("coteaching", {"forget_rate": -0.1}),
                       ("coteaching", {"tk": 0}), ("coteaching-meta", {"forget_rate": 0.2}),
                       ("coteaching-meta", {"tk": 1.5}), ("coteaching", {"exponent": 0.0})]:
        with pytest.raises(NLBenchError):
            create_method(name, **opts)
    assert create_method("coteaching", forget_rate="none", tk="4").options()["tk"] == 4


def test_runs_record_the_noise_rate_flag(tmp_path):
    record = train(tiny_config("coteaching"), device="cpu")
    assert record["status"] == "ok"
    assert record["uses_noise_rate"] is True
    assert record["method_version"] == 2
    assert record["method_options"]["forget_rate_used"] == pytest.approx(nominal_rate(record["noise_report"]))
    assert record["method_options"]["tk_used"] == 1
    # the forget rate of every epoch is in the history: tau from epoch 1 on with Tk = 1
    assert [h["forget_rate"] for h in record["history"]] == [record["method_options"]["forget_rate_used"]] * 2
    meta = train(tiny_config("coteaching-meta"), device="cpu")
    assert meta["uses_noise_rate"] is False and meta["uses_meta"] is True
    assert 0 < meta["method_options"]["forget_rate_used"] < 1
    assert [h["forget_rate"] for h in meta["history"]] == [0.0, meta["method_options"]["forget_rate_used"]]
