"""The airbench-style ``cifar-fast`` backbone and its ``cifar10-fast`` preset: shapes, the scaled bias-free head,
exact meta-gradients through its ops (GELU, max pooling, BatchNorm with a frozen scale, the 1/9 feature scale)
and every method through the harness, all on tiny random CIFAR-shaped tensors on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from meta_reference import reference_meta_loss  # tests/ is on sys.path under pytest
from torch import nn

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.datasets.base import Dataset
from nlbench.errors import NLBenchError
from nlbench.methods import get_method, list_methods
from nlbench.methods.meta_grad import (
    RecordedForward,
    frozen_batchnorm_stats,
    loss_jvp,
    meta_gradient,
    meta_scores,
    trainable_params,
)
from nlbench.models import create_model
from nlbench.models.fast import CifarFast

B, C, ETA, RTOL = 10, 3, 0.1, 1e-6
SHAPE = (3, 12, 12)  # the smallest convenient input for three halvings after the 2x2 stem (9x9 is the minimum)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_registered_model_shapes_and_head(shape):
    torch.manual_seed(0)
    model = create_model("cifar-fast", 10, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
        again = model.head(feats)
    assert logits.shape == (2, 10) and feats.shape == (2, 256) and model.feature_dim == 256
    assert torch.allclose(again, logits, atol=1e-6)
    assert type(model.head) is nn.Linear and model.head.bias is None
    n_all = sum(p.numel() for p in model.parameters())
    if shape == (3, 32, 32):  # airbench94's 1.97M, give or take the stem's BatchNorm and missing conv bias
        assert n_all == pytest.approx(1.97e6, rel=0.01)
    # BatchNorm scales are frozen at 1: everything else trains
    bn_weights = {f"{k}.weight" for k, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert len(bn_weights) == 7
    assert set(trainable_params(model)) == {k for k, _ in model.named_parameters()} - bn_weights
    assert all(torch.equal(model.get_parameter(k), torch.ones_like(model.get_parameter(k))) for k in bn_weights)


def test_feature_scale_is_the_output_scale():
    """airbench scales the logits by 1/9; here the features are scaled, which is the same for a bias-free head."""
    torch.manual_seed(0)
    scaled = CifarFast(4, SHAPE, widths=(4, 6, 8)).eval()
    plain = CifarFast(4, SHAPE, widths=(4, 6, 8), scale=1.0).eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(scaled(x), plain(x) / 9, atol=1e-6)
        assert torch.allclose(scaled.features(x), plain.features(x) / 9, atol=1e-7)
        # the pooling is a global max over the last blocks' maps: features are per-channel maxima of GELU outputs
        assert (plain.features(x) >= -0.17).all()  # GELU's minimum is about -0.17


def test_inputs_too_small_or_not_images_are_refused():
    with pytest.raises(ValueError, match="at least 9x9"):
        create_model("cifar-fast", 10, (3, 8, 8))
    with pytest.raises(ValueError, match="image inputs"):
        create_model("cifar-fast", 10, (32,))
    create_model("cifar-fast", 10, (3, 9, 9))  # the smallest that works
    ds = _random_dataset((3, 8, 8), n_train=40, n_test=10)
    with pytest.raises(NLBenchError, match="does not fit"):  # the harness turns it into one user-error line
        train(RunConfig(method="erm", noise="sym20", model="cifar-fast", dataset="cifar10", epochs=1, batch_size=8,
                        meta_size=0), device="cpu", dataset=ds)


@pytest.fixture
def problem():
    """A small float64 cifar-fast with moved BatchNorm statistics, a batch and a meta batch."""
    g = torch.Generator().manual_seed(7)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = CifarFast(C, SHAPE, widths=(4, 6, 8), stem_width=5).double().train()
    for _ in range(2):
        model(torch.randn(B, *SHAPE, generator=g, dtype=torch.float64))
    x = torch.randn(B, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    xm = torch.randn(B, *SHAPE, generator=g, dtype=torch.float64)
    ym = torch.randint(0, C, (B,), generator=g)
    return model, x, y, xm, ym


def _assert_rel(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= RTOL * scale


@pytest.mark.parametrize("weighted", [False, True])
def test_meta_scores_equal_double_backward(problem, weighted):
    model, x, y, xm, ym = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    w = torch.rand(B, generator=torch.Generator().manual_seed(1), dtype=torch.float64) if weighted else None
    got = meta_scores(model, x, y, xm, ym, ETA, w)
    ref_w = (torch.zeros(B, dtype=torch.float64) if w is None else w).clone().requires_grad_(True)
    ref = -torch.autograd.grad(reference_meta_loss(model, x, y, xm, ym, ETA, ref_w), ref_w)[0]
    assert got.shape == (B,)
    _assert_rel(got, ref)
    for k, v in model.state_dict().items():  # running statistics untouched by the meta passes
        assert torch.equal(v, before[k]), k


def test_recorded_forward_replays_every_op(problem):
    """The step's own forward is recorded without falling back to a second pass (GELU goes through the exact
    generic rule, max pooling, BatchNorm and the scale through dedicated ones) and gives the same tangents as a
    full forward-mode pass and as per-example gradients."""
    model, x, y, xm, ym = problem
    u = meta_gradient(model, xm, ym)
    with frozen_batchnorm_stats(model):
        forward = RecordedForward(model, x)
    assert forward.valid
    _, full = loss_jvp(model, x, y, u)
    replay = forward.loss_tangent(y, u)
    _assert_rel(replay, full)
    params = trainable_params(model)
    expected = []
    for i in range(B):
        with frozen_batchnorm_stats(model):
            li = nn.functional.cross_entropy(model(x), y, reduction="none")[i]
        grads = torch.autograd.grad(li, list(params.values()))
        expected.append(sum((gr * u[k]).sum() for gr, k in zip(grads, params, strict=True)))
    _assert_rel(replay, torch.stack(expected))


def test_preset():
    cfg = RunConfig.from_preset("cifar10-fast", method="mwnet", noise="sym20")
    assert (cfg.dataset, cfg.model, cfg.batch_size, cfg.schedule, cfg.augment) == \
        ("cifar10", "cifar-fast", 1024, "cosine", True)
    assert cfg.epochs <= 30 and cfg.meta_size == 1000
    jpeg = RunConfig.from_preset("cifar10-fast", dataset="cifar10-jpeg", method="mwnet", noise="sym20")
    assert jpeg.hash() == RunConfig.from_preset("cifar10-jpeg-fast", method="mwnet", noise="sym20").hash()


def _random_dataset(shape=(3, 16, 16), n_train=96, n_test=20) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, *shape), dtype=torch.uint8, generator=g)
    y = torch.arange(n_train + n_test) % 10
    return Dataset("cifar10", x[:n_train], y[:n_train], x[n_train:], y[n_train:], [f"c{i}" for i in range(10)],
                   mean=(0.5,) * shape[0], std=(0.25,) * shape[0])


@pytest.mark.parametrize("name", list_methods())
def test_every_method_trains_on_cifar_fast(name):
    """The preset, shrunk to one epoch of tiny random 16x16 images, runs every registered method unchanged."""
    cfg = RunConfig.from_preset("cifar10-fast", method=name, noise="sym20", epochs=1, batch_size=16, meta_size=16,
                                val_size=8)
    rec = train(cfg, device="cpu", dataset=_random_dataset())
    assert rec["status"] == "ok" and rec["model"] == "cifar-fast"
    h = rec["history"][-1]
    assert math.isfinite(h["train_loss"]) and 0 <= h["test_acc"] <= 1
    if get_method(name).reweights:
        assert 0 <= h["w_clean_mean"] <= 1 and 0 <= h["w_noisy_mean"] <= 1


def test_named_grid_runs_the_preset_on_the_jpeg_copy():
    from nlbench.benchmark import grid as G

    configs = G.expand(G.load_grid("cifar10-fast"))
    main = [c for c in configs if c.noise != "clean"]
    assert len({c.method for c in main}) >= 10 and {"erm", "surrogate", "mwnet"} <= {c.method for c in main}
    assert {c.noise for c in main} == {"sym20", "sym50", "pairflip40", "cifar10n-worst"}
    assert {c.seed for c in main} == {0, 1, 2} and {c.dataset for c in configs} == {"cifar10-jpeg"}
    assert len(main) == len({c.method for c in main}) * 4 * 3
    # the same configs (hashes) as `nlbench run --preset cifar10-fast --dataset cifar10-jpeg` in gpu_check.sh,
    # so the grid reuses the check's records
    from nlbench.benchmark.harness import canonical_config

    for c in main:  # both canonicalised, as `run` and the grid driver do (per-noise-family defaults join there)
        assert c.hash() == canonical_config(RunConfig.from_preset("cifar10-fast", dataset="cifar10-jpeg",
                                                                  method=c.method, noise=c.noise,
                                                                  seed=c.seed)).hash()
    assert [(c.method, c.noise) for c in configs if c.noise == "clean"] == [("erm", "clean")] * 3
