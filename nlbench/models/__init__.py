"""Model registry.

Every model is an ``nn.Module`` with two parts, because the surrogate and the feature view need the
penultimate features: ``features(x) -> (B, d)`` and a linear ``head`` with ``forward(x) == head(features(x))``.
Factories are registered with ``@register_model("name")`` and called as ``factory(num_classes, input_shape)``.
"""

from __future__ import annotations

from torch import nn

from nlbench.registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register


class FeatureModel(nn.Module):
    """Base class: subclasses set ``self.head`` and implement :meth:`features`."""

    head: nn.Linear

    def features(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x):
        return self.head(self.features(x))

    @property
    def feature_dim(self) -> int:
        return self.head.in_features


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...]) -> FeatureModel:
    """Build model ``name`` for ``num_classes`` outputs and inputs of ``input_shape`` (without batch dim)."""
    return MODELS.get(name)(num_classes, tuple(input_shape))


from nlbench.models import fast, resnet, small  # noqa: E402,F401

__all__ = ["MODELS", "FeatureModel", "create_model", "list_models", "register_model"]
