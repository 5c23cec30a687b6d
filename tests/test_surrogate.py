"""FBR surrogate: the score on a hand-computed example (full and each ablation), invariances, and the method's
weights, BatchNorm hygiene, modes and refresh options."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

import nlbench.methods.surrogate as sur
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method, get_method
from nlbench.methods.surrogate import encode_meta, surrogate_scores
from nlbench.models import create_model

# Meta features G (mean (1, 1); centred rows (2, 1), (2, -1), (-2, 1), (-2, -1)), classes 0, 0, 1, 1.
G = torch.tensor([[3.0, 2.0], [3.0, 0.0], [-1.0, 2.0], [-1.0, 0.0]])
GY = torch.tensor([0, 0, 1, 1])
# Batch features (centred: (1, 0), (-1, 1), (0, 2)) with noisy labels 0, 0, 1.
FB = torch.tensor([[2.0, 1.0], [0.0, 2.0], [1.0, 3.0]])
FY = torch.tensor([0, 0, 1])

# Worked by hand (C = 2, lambda- = 1). Centred S rows: [2, 2, -2, -2], [-1, -3, 3, 1], [2, -2, 2, -2]; class means
# (2, -2), (-2, 2), (0, 0) -> s2 = -2, -2, 0 -> S' rows [4, 4, 0, 0], [1, 0, 5, 3], [2, 0, 2, 0];
# r = [(4+4)/4, (1+0-5-3)/4, (-2-0+2+0)/4].
FULL = [2.0, -1.75, 0.0]
# center=False: raw S rows [8, 6, 0, -2], [4, 0, 4, 0], [9, 3, 5, -1]; s2 = -1, 2, 2;
# S' = [9, 7, 1, 0], [2, 0, 2, 0], [7, 1, 3, 0]; r = [(16-1)/4, (2-2)/4, (3-8)/4].
NO_CENTER = [3.75, 0.0, -1.25]
# row_shift=False: r = [(2+2+2+2)/4, (-1-3-3-1)/4, (-2-2+2+2)/4].
NO_SHIFT = [2.0, -2.0, 0.0]
# signed=False (lambda- = 0): only same-class entries of S' count: [(4+4)/4, (1+0)/4, (2+0)/4].
NO_SIGN = [2.0, 0.25, 0.5]


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, FULL), ({"center": False}, NO_CENTER), ({"row_shift": False}, NO_SHIFT), ({"signed": False}, NO_SIGN),
], ids=["full", "no-center", "no-shift", "no-sign"])
def test_hand_computed_scores(flags, expected):
    r = surrogate_scores(FB, FY, G, GY, 2, **flags)
    assert r.tolist() == pytest.approx(expected, abs=1e-6)


def test_absent_class_is_never_the_runner_up():
    # C = 3 with class 2 absent from the meta set: the runner-up is still the other present class (s2 as for
    # C = 2; a silent 0 for class 2 would give s2 = 0 in rows 1 and 2), and lambda- = 1/2:
    # r = [(8 - 0/2)/4, (1 - 8/2)/4, (2 - 2/2)/4].
    r = surrogate_scores(FB, FY, G, GY, 3)
    assert r.tolist() == pytest.approx([2.0, -0.75, 0.25], abs=1e-6)


def test_single_present_class_skips_the_shift():
    # No runner-up: S' = S, negatives kept. Raw row 1 is [8, 6, 0, -2], all class 0: r = (2*12 - 12)/4 = 3
    # for label 0 and (0 - 12)/4 = -3 for label 1 (clamping at 0 would give 3.5 and -3.5).
    r = surrogate_scores(FB[:1].repeat(2, 1), torch.tensor([0, 1]), G, torch.zeros(4, dtype=torch.long), 2,
                         center=False)
    assert r.tolist() == pytest.approx([3.0, -3.0], abs=1e-6)


def test_invariances():
    g = torch.Generator().manual_seed(0)
    f, gm = torch.randn(16, 8, generator=g), torch.randn(30, 8, generator=g)
    y, gy = torch.randint(0, 5, (16,), generator=g), torch.arange(30) % 5
    r = surrogate_scores(f, y, gm, gy, 5)
    shift = torch.randn(1, 8, generator=g) * 10
    # centring removes any common offset of the features
    assert torch.allclose(surrogate_scores(f + shift, y, gm + shift, gy, 5), r, atol=1e-4)
    # ... which the uncentred score does not
    assert not torch.allclose(surrogate_scores(f + shift, y, gm + shift, gy, 5, center=False),
                              surrogate_scores(f, y, gm, gy, 5, center=False), atol=1e-2)
    # scale covariance r(aF, aG) = a^2 r(F, G), and the meta set's order does not matter
    assert torch.allclose(surrogate_scores(3 * f, y, 3 * gm, gy, 5), 9 * r, atol=1e-4)
    perm = torch.randperm(30, generator=g)
    assert torch.allclose(surrogate_scores(f, y, gm[perm], gy[perm], 5), r, atol=1e-5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_classes"):
        surrogate_scores(FB, FY, G, GY, 1)
    with pytest.raises(ValueError, match="at least one meta"):
        surrogate_scores(FB, FY, G[:0], GY[:0], 2)
    with pytest.raises(ValueError, match="share d"):
        surrogate_scores(FB, FY, G[:, :1], GY, 2)


def _ctx(model, meta_x, meta_y, num_train, num_classes=3):
    return MethodContext(model=model, meta_x=meta_x, meta_y=meta_y, num_train=num_train, num_classes=num_classes,
                         batch_size=8, device=torch.device("cpu"), generator=torch.Generator().manual_seed(1),
                         prep=lambda t: t, autocast=contextlib.nullcontext)


def _model(name, num_classes, shape, seed=0):
    with torch.random.fork_rng(devices=[]):  # module init draws from the global RNG: seed it, fenced off
        torch.manual_seed(seed)
        return create_model(name, num_classes, shape)


def _vector_setup(n=40, m=12, d=6, seed=0):
    model = _model("mlp", 3, (d,), seed)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)
    return model, x, y, torch.randn(m, d, generator=g), torch.arange(m) % 3


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("bn", ["train", "eval"])
def test_meta_pass_leaves_batchnorm_statistics_untouched(bn):
    model = _model("lenet", 10, (1, 28, 28)).train()
    g = torch.Generator().manual_seed(0)
    model(torch.randn(4, 1, 28, 28, generator=g))  # non-trivial running statistics
    before = _bn_state(model)
    feats = encode_meta(model, torch.randn(6, 1, 28, 28, generator=g) * 3 + 1, bn=bn)
    assert feats.shape == (6, 84) and not feats.requires_grad
    assert model.training
    after = _bn_state(model)
    assert len(before) == 6 and all(torch.equal(before[k], after[k]) for k in before)


def test_step_updates_batchnorm_exactly_once():
    """A surrogate step changes the running statistics exactly as one train-mode forward of the batch does:
    the meta pass contributes nothing and the batch is forwarded once."""
    model, twin = _model("lenet", 10, (1, 28, 28)).train(), _model("lenet", 10, (1, 28, 28)).train()
    g = torch.Generator().manual_seed(0)
    x, meta_x = torch.randn(8, 1, 28, 28, generator=g), torch.randn(20, 1, 28, 28, generator=g)
    for refresh in ("batch", 3):
        m = create_method("surrogate", refresh=refresh, meta_batch=5)
        m.setup(_ctx(model, meta_x, torch.arange(20) % 10, 8, num_classes=10))
        m.step(Batch(x, torch.arange(8), torch.arange(8), 0.1, 0, 1), model)
        with torch.no_grad():
            twin.features(x)
        a, b = _bn_state(model), _bn_state(twin)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["body.1.num_batches_tracked"]) == 3  # LeNet.__init__ probes its size with one forward


def test_persistent_weights_stay_in_unit_interval_and_loss_is_normalised_by_batch():
    model, x, y, mx, my = _vector_setup()
    m = create_method("surrogate", alpha=5.0, w0=0.5, refresh=1)
    m.setup(_ctx(model, mx, my, len(y)))
    assert torch.equal(m.sample_weights(), torch.full((40,), 0.5))
    for s in range(10):
        idx = torch.arange(8 * (s % 5), 8 * (s % 5 + 1))
        out = m.step(Batch(x[idx], y[idx], idx, 0.1, s, 1), model)
        w = m.sample_weights()
        assert torch.equal(out.weights, w[idx])
        assert w.min() >= 0 and w.max() <= 1
        losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
        assert out.loss.item() == pytest.approx((out.weights * losses).sum().item() / 8, rel=1e-5)
    # alpha = 5 drives weights to the clip bounds exactly
    assert (w == 0).any() and (w == 1).any()


def test_persistent_update_matches_the_rule():
    model, x, y, mx, my = _vector_setup()
    m = create_method("surrogate", alpha=0.3, w0=0.5, scale="meta", refresh=1)
    m.setup(_ctx(model, mx, my, len(y)))
    idx = torch.arange(8)
    out = m.step(Batch(x[idx], y[idx], idx, 0.1, 0, 1), model)
    with torch.no_grad():
        feats, g = model.features(x[idx]), model.features(mx)
    r = surrogate_scores(feats, y[idx], g, my, 3)
    s = (g - g.mean(0)).pow(2).sum(1).mean() / 3
    assert torch.allclose(out.weights, (0.5 + 0.3 * r / s).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("scale", ["ema", "meta"])
def test_direct_mode(scale):
    model, x, y, mx, my = _vector_setup()
    m = create_method("surrogate", mode="direct", scale=scale, refresh=1)
    m.setup(_ctx(model, mx, my, len(y)))
    idx = torch.arange(8, 16)
    out = m.step(Batch(x[idx], y[idx], idx, 0.1, 0, 1), model)
    with torch.no_grad():
        feats, g = model.features(x[idx]), model.features(mx)
    r = surrogate_scores(feats, y[idx], g, my, 3)
    # ema after one step (bias-corrected) is the batch's mean |r|
    s = r.abs().mean() if scale == "ema" else (g - g.mean(0)).pow(2).sum(1).mean() / 3
    assert torch.allclose(out.weights, (r / s).clamp(0, 1), atol=1e-6)
    w = m.sample_weights()
    assert torch.equal(w[idx], out.weights) and torch.equal(w[:8], torch.ones(8))  # unseen keep w0 = 1


def test_refresh_options(monkeypatch):
    calls: list[int] = []

    def spy(model, x, *, bn):
        calls.append(len(x))
        return encode_meta(model, x, bn=bn)

    monkeypatch.setattr(sur, "encode_meta", spy)
    model, x, y, mx, my = _vector_setup()
    idx = torch.arange(8)
    m = create_method("surrogate", refresh=3)
    m.setup(_ctx(model, mx, my, len(y)))
    for s in range(7):
        m.step(Batch(x[idx], y[idx], idx, 0.1, s, 1), model)
    assert calls == [12, 12, 12]  # steps 0, 3, 6 re-encode the whole meta set
    calls.clear()
    m = create_method("surrogate", refresh="batch", meta_batch=5)
    m.setup(_ctx(model, mx, my, len(y)))
    for s in range(3):
        m.step(Batch(x[idx], y[idx], idx, 0.1, s, 1), model)
    assert calls == [5, 5, 5]
    assert create_method("surrogate", refresh="4").refresh == 4  # --opt refresh=4 may arrive as a string


@pytest.mark.parametrize("opts", [{"mode": "soft"}, {"scale": "max"}, {"refresh": 0}, {"refresh": "epoch"},
                                  {"meta_bn": "frozen"}, {"alpha": 0}, {"w0": 1.5}, {"meta_batch": 0},
                                  {"gamma": 1}])
def test_bad_options_are_user_errors(opts):
    with pytest.raises(NLBenchError):
        create_method("surrogate", **opts)


def test_needs_a_meta_set():
    model, *_ = _vector_setup()
    with pytest.raises(NLBenchError, match="meta-size"):
        create_method("fbr").setup(_ctx(model, torch.zeros(0, 6), torch.zeros(0, dtype=torch.long), 10))


def test_registry_flags_and_options():
    assert get_method("fbr") is get_method("surrogate")
    flags = {n: (get_method(n).center, get_method(n).row_shift, get_method(n).signed)
             for n in ("surrogate", "surrogate-no-center", "surrogate-no-shift", "surrogate-no-sign")}
    assert flags == {"surrogate": (True, True, True), "surrogate-no-center": (False, True, True),
                     "surrogate-no-shift": (True, False, True), "surrogate-no-sign": (True, True, False)}
    for n in flags:
        cls = get_method(n)
        assert cls.reweights and cls.uses_meta and not cls.oracle
    opts = create_method("surrogate-no-sign", alpha=0.2).options()
    assert opts["alpha"] == 0.2 and opts["signed"] is False and set(opts) == {
        "mode", "alpha", "w0", "scale", "refresh", "meta_batch", "meta_bn", "center", "row_shift", "signed"}


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_surrogate_scores_keep_the_input_precision(default, dtype):
    """float64 in, float64 out; bf16 upcast to float32; under any default dtype (row_shift uses torch.where)."""
    g = torch.Generator().manual_seed(0)
    feats, meta = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g,
                                                                                   dtype=torch.float64)
    labels, meta_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    reference = surrogate_scores(feats, labels, meta, meta_labels, 3)
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        r = surrogate_scores(feats.to(dtype), labels, meta.to(dtype), meta_labels, 3, row_shift=True)
    finally:
        torch.set_default_dtype(old)
    assert r.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(r.double(), reference, atol=tol, rtol=tol)


def test_ablations_at_w0_half_reweight_unlike_their_parent():
    """At w0 = 0.5 (the ablation study's setting) every variant produces non-uniform weights, and each ablation's
    weights differ from the full method's: the study ablates something (at w0 = 1 no-sign stays at 1)."""
    from nlbench.benchmark.harness import train
    from tests.test_methods_all import tiny_config

    def telemetry(name, **opts):
        rec = train(tiny_config(name, method_options=opts), device="cpu")
        return [(h["w_clean_mean"], h["w_noisy_mean"], h["w_auroc"]) for h in rec["history"]]

    parent = telemetry("surrogate", w0=0.5)
    for name in ("surrogate", "surrogate-no-center", "surrogate-no-shift", "surrogate-no-sign"):
        tel = telemetry(name, w0=0.5)
        assert all(auroc != 0.5 and clean != noisy for clean, noisy, auroc in tel), name
        if name != "surrogate":
            assert tel != parent, name
    uniform = telemetry("surrogate-no-sign")  # w0 = 1: the weights never move
    assert all(c == 1.0 and n == 1.0 for c, n, _ in uniform)
