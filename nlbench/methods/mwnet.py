"""Meta-Weight-Net (MW-Net; Shu et al. 2019) with the exact meta-gradient computed by forward mode.

A weight net ``V(l; phi)``: 1-100-1 MLP (ReLU, sigmoid) maps the detached per-sample loss to a weight in
``(0, 1)``. Each step, as in the official code:

1. one forward of the classifier, ``l_i(theta)`` (shared with the real step, so BatchNorm statistics move once);
2. ``w_i = V(l_i; phi)`` and the virtual step ``theta_hat = theta - eta * grad sum_i w_i l_i / B``;
3. the meta step on ``phi`` (Adam, lr 1e-3, weight decay 1e-4) with the exact gradient of the meta loss on a
   fresh meta batch,
   ``dL_V/dphi = -(eta/B) sum_i (grad L_V(theta_hat)^T grad l_i(theta)) dw_i/dphi = -sum_i g_i dw_i/dphi``:
   the forward-mode scores ``g`` (:mod:`nlbench.methods.meta_grad`) back-propagated through the weight net only,
   instead of a double backward through the classifier;
4. the real step with the new weights ``w'_i = V(l_i; phi')`` and the loss ``sum_i w'_i l_i / B`` (the
   official code's ``torch.sum(cost_v * w_new) / len(cost_v)``).

Choices nlbench makes: the weight net is initialised like ``nn.Linear`` (Kaiming-uniform weights, uniform
biases) from the method's seeded generator, never from the global RNG; it runs in float32 outside autocast;
``eta`` is the current learning rate of the classifier (the official code passes its step-decayed lr). The
meta batch is ``meta_batch`` samples per step (default: the batch size; MW-Net uses 100 and 100). Telemetry
weights are the sigmoid outputs ``w'_i``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from torch import nn

from nlbench.methods.base import Batch, MethodContext, StepOutput, register_method
from nlbench.methods.meta_batch import MetaBatchMethod
from nlbench.methods.meta_grad import (
    RecordedForward,
    frozen_batchnorm_stats,
    meta_scores,
    per_example_losses,
)
from nlbench.options import Choice, Range

__all__ = ["MWNet", "WeightNet", "weight_net_meta_grad"]


class WeightNet(nn.Module):
    """MW-Net's weight net: ``sigmoid(W2 relu(W1 l + b1) + b2)`` for a column of losses ``(B, 1)``.

    Parameters are drawn from ``generator`` with ``nn.Linear``'s default distribution (no global RNG use).
    """

    def __init__(self, hidden: int = 100, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.fc1 = nn.Linear(1, hidden, device="meta")
        self.fc2 = nn.Linear(hidden, 1, device="meta")
        self.to_empty(device=device or "cpu")
        self.to(dtype)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                bound = 1.0 / math.sqrt(fc.in_features)
                # nn.Linear's default: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
                fc.weight.uniform_(-bound, bound, generator=generator)
                fc.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(losses))))


def _weights(weight_net: nn.Module, losses: torch.Tensor) -> torch.Tensor:
    """``V(l)`` as a ``(B,)`` vector, in the weight net's dtype and outside autocast."""
    dtype = next(weight_net.parameters()).dtype
    with torch.autocast(losses.device.type, enabled=False):
        return weight_net(losses.detach().to(dtype)[:, None]).squeeze(1)


def batch_normalised(w: torch.Tensor) -> torch.Tensor:
    """``w / sum(w)``, or ``w`` itself when the sum is 0 (the official ``train_WRN-28-10_Meta_PGC.py`` rule)."""
    total = w.sum()
    return torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)


def weight_net_meta_grad(model: nn.Module, weight_net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         x_meta: torch.Tensor, y_meta: torch.Tensor, eta: float, *,
                         forward: RecordedForward | None = None,
                         normalize: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Exact ``dL_V(theta_hat)/dphi`` for the parameters of ``weight_net`` and the scores ``g`` ``(B,)``.

    ``x``, ``x_meta`` model-ready; ``eta`` the virtual step size. ``forward`` may pass the caller's
    :class:`~nlbench.methods.meta_grad.RecordedForward` of ``model`` on ``x`` (its graph is retained for the
    real step); otherwise that forward runs here with frozen BatchNorm statistics. Returns gradients in the
    order of ``weight_net.parameters()``; the model's parameters, ``.grad`` and BatchNorm statistics are not
    changed and nothing is stepped.
    """
    if forward is None:
        with torch.enable_grad(), frozen_batchnorm_stats(model):
            forward = RecordedForward(model, x)
    losses = per_example_losses(forward.output, y)
    with torch.enable_grad():
        w = _weights(weight_net, losses)
        # The virtual step is theta - eta * grad sum_i v_i l_i / B; the normalised variant's sum_i (w_i / S) l_i
        # is that with v = B w / S, whose dependence on phi (through S too) the chain rule below follows.
        v = len(w) * batch_normalised(w) if normalize else w
    scores = meta_scores(model, x, y, x_meta, y_meta, eta, v.detach(), forward=forward)
    with torch.enable_grad():
        grads = torch.autograd.grad(-(scores.to(v.dtype) * v).sum(), list(weight_net.parameters()))
    return list(grads), scores


@register_method("mwnet")
class MWNet(MetaBatchMethod):
    """Meta-Weight-Net; see the module docstring.

    Options: ``hidden`` (100), ``meta_lr`` (1e-3), ``meta_weight_decay`` (1e-4 with Adam, 5e-4 with SGD),
    ``meta_batch`` (default: the batch size), ``normalize`` and ``meta_optimizer``.

    The official repository has two training scripts. ``MW-Net.py`` (the default here) uses the raw sigmoid
    weights and Adam for the weight net. ``train_WRN-28-10_Meta_PGC.py`` divides the weights by their batch sum
    in both the virtual and the real step and uses SGD (momentum 0.9, Nesterov, weight decay 5e-4) for the
    weight net: ``normalize=true`` selects that variant (its optimiser unless ``meta_optimizer`` is given).
    Telemetry records the raw sigmoid outputs in both variants, so the weights stay on the [0, 1] scale.
    """

    def __init__(self, *, hidden: Annotated[int, Range(1, 10_000)] = 100,
                 meta_lr: Annotated[float, Range(0, 10, low_open=True)] = 1e-3,
                 meta_weight_decay: Annotated[float, Range(0, 1)] | None = None,
                 meta_batch: Annotated[int, Range(1, 1_000_000)] | None = None, normalize: bool = False,
                 meta_optimizer: Annotated[str, Choice("adam", "sgd")] | None = None):
        super().__init__(meta_batch=meta_batch)
        self.normalize = normalize
        self.meta_optimizer = meta_optimizer or ("sgd" if normalize else "adam")
        if meta_weight_decay is None:
            meta_weight_decay = 5e-4 if self.meta_optimizer == "sgd" else 1e-4
        self.hidden, self.meta_lr, self.meta_weight_decay = hidden, float(meta_lr), float(meta_weight_decay)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.weight_net = WeightNet(self.hidden, generator=ctx.generator, device=ctx.device)
        if self.meta_optimizer == "sgd":
            self.opt = torch.optim.SGD(self.weight_net.parameters(), lr=self.meta_lr, momentum=0.9, nesterov=True,
                                       weight_decay=self.meta_weight_decay)
        else:
            self.opt = torch.optim.Adam(self.weight_net.parameters(), lr=self.meta_lr,
                                        weight_decay=self.meta_weight_decay)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        x_meta, y_meta = self.next_meta_batch()
        forward = RecordedForward(model, batch.x)  # the real step's forward, shared with the virtual step
        losses = per_example_losses(forward.output, batch.y)
        grads, _ = weight_net_meta_grad(model, self.weight_net, batch.x, batch.y, x_meta, y_meta, batch.lr,
                                        forward=forward, normalize=self.normalize)
        for p, g in zip(self.weight_net.parameters(), grads, strict=True):
            p.grad = g
        self.opt.step()
        with torch.no_grad():
            w = _weights(self.weight_net, losses)
        if self.normalize:
            return StepOutput((batch_normalised(w) * losses).sum(), w)
        return StepOutput((w * losses).sum() / len(batch.y), w)

    def options(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "meta_lr": self.meta_lr, "meta_weight_decay": self.meta_weight_decay,
                "normalize": self.normalize, "meta_optimizer": self.meta_optimizer, **super().options()}
