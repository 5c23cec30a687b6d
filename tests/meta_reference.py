"""The slow, obvious meta-gradient: the ground truth that tests compare :mod:`nlbench.methods.meta_grad` with
(not used in training, so not part of the package)."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from nlbench.methods.meta_grad import per_example_losses, trainable_params


def reference_meta_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor,
                        y_meta: torch.Tensor, eta: float, weights: torch.Tensor) -> torch.Tensor:
    """``L_V(theta_hat(w))`` with the full graph through the virtual step (``create_graph=True``).

    Differentiating the result w.r.t. ``weights`` (or whatever ``weights`` was computed from, such as a weight
    net) gives the exact meta-gradient by double backward: ``g = -autograd.grad(L_V, weights)``. It is the
    obvious, slow route (tests only). Both passes run on *copies* of the BatchNorm buffers, so the module's
    running statistics are never touched, independently of :func:`frozen_batchnorm_stats`.
    """
    params = trainable_params(model)
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    losses = per_example_losses(functional_call(model, (params, buffers), (x,)), y)
    obj = (weights * losses).sum() / x.shape[0]
    grads = torch.autograd.grad(obj, list(params.values()), create_graph=True, allow_unused=True)
    hat = {k: p if g is None else p - eta * g for (k, p), g in zip(params.items(), grads, strict=True)}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    return per_example_losses(functional_call(model, (hat, buffers), (x_meta,)), y_meta).mean()
