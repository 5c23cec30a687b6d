"""Co-teaching (``coteaching``, ``coteaching-meta``): the schedule, the cross selection and the meta estimate on
hand cases, the flags, and runs through the harness."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from fixed_logits import Fixed  # tests/ is on sys.path under pytest

from nlbench.benchmark.harness import nominal_rate, train
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method, get_method
from nlbench.methods.coteaching import agreement_noise_rate, coteaching_select, forget_rate_at, kept_count, resolve_tk
from tests.test_methods_all import tiny_config


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
    assert get_method("coteaching").uses_noise_rate is True
    assert get_method("coteaching").uses_meta is False
    assert get_method("coteaching-meta").uses_noise_rate is False
    assert get_method("coteaching-meta").uses_meta is True


@pytest.mark.parametrize(("t", "expected"), [(0, 0.0), (1, 0.04), (5, 0.2), (9, 0.36), (10, 0.4), (15, 0.4)])
def test_forget_rate_schedule(t, expected):
    assert forget_rate_at(t, 0.4, 10) == pytest.approx(expected)


@pytest.mark.parametrize(("tk", "epochs", "expected"), [
    (None, 200, 10), (None, 30, 10), (None, 20, 6), (None, 3, 1), (None, 2, 1), (None, 1, 1),
    (5, 30, 5), (50, 30, 29), (50, 2, 1), (3, 1, 1),
])
def test_resolve_tk(tk, epochs, expected):
    assert resolve_tk(tk, epochs) == expected


@pytest.mark.parametrize(("b", "rate", "k"), [(64, 0.4, 38), (5, 0.0, 5), (5, 0.4, 3), (10, 0.9, 1), (5, 0.9, 1),
                                              (1, 0.5, 1), (3, 0.99, 1), (7, 0.5, 3)])
def test_kept_count(b, rate, k):
    assert kept_count(b, rate) == k


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
    # epoch 11: t = 10, r = 0.4, keep 3; net 1 trains on net 2's {4, 0, 2}, net 2 on net 1's {1, 3, 0}
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 11), net1)
    ce1 = F.cross_entropy(logits1, y, reduction="none")
    ce2 = F.cross_entropy(logits2, y, reduction="none")
    expected = ce1[[4, 0, 2]].mean() + ce2[[1, 3, 0]].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    out.loss.backward()
    assert (net1.logits.grad.abs().sum(1) > 0).tolist() == [True, False, True, False, True]
    assert (net2.logits.grad.abs().sum(1) > 0).tolist() == [True, True, False, True, False]
    # epoch 1: r(0) = 0, both nets train on the whole batch
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 1), net1)
    assert out.loss.item() == pytest.approx((ce1.mean() + ce2.mean()).item(), rel=1e-6)
    # epoch 3: t = 2, r = 0.08, keep floor(0.92 * 5) = 4
    out = method.step(Batch(torch.zeros(5, 1), y, torch.arange(5), 0.1, 0, 3), net1)
    assert out.loss.item() == pytest.approx((ce1[[4, 0, 2, 3]].mean() + ce2[[1, 3, 0, 4]].mean()).item(), rel=1e-6)


def test_forget_rate_option_overrides_nominal():
    method = create_method("coteaching", forget_rate=0.25)
    method.setup(make_ctx(Fixed(torch.zeros(5, 3)), Fixed(torch.zeros(5, 3)), epochs=3, noise_rate=0.4))
    assert method.current_forget_rate(2) == 0.25 and method.current_forget_rate(1) == 0.0
    assert method.options() == {"forget_rate": 0.25, "tk": None, "forget_rate_used": 0.25, "tk_used": 1}


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
    assert method.current_forget_rate(11) == pytest.approx(0.24)
    with pytest.raises(NLBenchError, match="meta"):
        create_method("coteaching-meta").setup(make_ctx(net1, net2, noise_rate=None))


def test_options_validation():
    for name, opts in [("coteaching", {"forget_rate": 1.0}), ("coteaching", {"forget_rate": -0.1}),
                       ("coteaching", {"tk": 0}), ("coteaching-meta", {"forget_rate": 0.2}),
                       ("coteaching-meta", {"tk": 1.5})]:
        with pytest.raises(NLBenchError):
            create_method(name, **opts)
    assert create_method("coteaching", forget_rate="none", tk="4").options()["tk"] == 4


def test_runs_record_the_noise_rate_flag(tmp_path):
    record = train(tiny_config("coteaching"), device="cpu")
    assert record["status"] == "ok"
    assert record["uses_noise_rate"] is True
    assert record["method_options"]["forget_rate_used"] == pytest.approx(nominal_rate(record["noise_report"]))
    assert record["method_options"]["tk_used"] == 1
    meta = train(tiny_config("coteaching-meta"), device="cpu")
    assert meta["uses_noise_rate"] is False and meta["uses_meta"] is True
    assert 0 < meta["method_options"]["forget_rate_used"] < 1
