"""Every registered model: shapes, ``forward == head(features)``, parameter counts, unknown names."""

from __future__ import annotations

import pytest
import torch

from nlbench.errors import UnknownNameError
from nlbench.models import create_model, list_models

# Reference sizes for 10 classes (MW-Net ResNet-32, Kuang Liu's CIFAR nets, WRN-28-10 of Zagoruyko & Komodakis).
PARAMS_M = {"resnet32": 0.46, "preact-resnet18": 11.2, "resnet34": 21.3, "wrn-28-10": 36.5}
FEATURE_DIM = {"resnet32": 64, "preact-resnet18": 512, "resnet34": 512, "wrn-28-10": 640, "resnet50": 2048}
BIG = {"resnet50"}  # ImageNet layout: exercised at 64x64 instead of 32x32
SMALL = {"mlp", "lenet", "resnet32"}  # cheap enough to also run on 1x28x28


def _cases():
    for name in list_models():
        yield name, (3, 64, 64) if name in BIG else (3, 32, 32)
        if name in SMALL:
            yield name, (1, 28, 28)


@pytest.mark.parametrize(
    ("name", "shape"), list(_cases()), ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else v
)
def test_model_shapes_and_head(name, shape):
    torch.manual_seed(0)
    model = create_model(name, 10, shape).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        again = model.head(feats)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, model.feature_dim)
    assert torch.allclose(again, logits, atol=1e-5)
    assert torch.isfinite(logits).all()
    if name in FEATURE_DIM:
        assert model.feature_dim == FEATURE_DIM[name]
    if name in PARAMS_M and shape == (3, 32, 32):
        n = sum(p.numel() for p in model.parameters()) / 1e6
        assert n == pytest.approx(PARAMS_M[name], rel=0.05), f"{name}: {n:.3f}M parameters"


def test_unknown_model_suggests_close_match():
    with pytest.raises(UnknownNameError, match="resnet32") as err:
        create_model("resnet-32", 10, (3, 32, 32))
    assert "Did you mean 'resnet32'" in str(err.value)
