"""Loss correction with a class-transition matrix: the shared parts of ``forward`` and ``glc``.

Both methods model class-conditional label noise with a row-stochastic matrix ``T``,
``T[i, j] = p(noisy label j | true class i)``, estimate it from a network trained with cross-entropy on the
noisy pool for a short warm-up, and then train on the forward-corrected loss ``-log((softmax(z) @ T)[y])``: the
network's output is read as the clean posterior and pushed through the noise before it meets the noisy label
(Patrini et al., CVPR 2017, Theorem 2). They differ only in the estimator:

- :func:`anchor_transition` (``forward``): anchor points found on the noisy pool itself;
- :func:`class_mean_transition` (``glc``): class means of the predictions on trusted (clean) samples.

The three helpers are pure functions of tensors. :class:`TransitionCorrected` is the unregistered base class
that runs the warm-up, calls the estimator once and switches the loss; the two methods are in ``forward.py``
and ``glc.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, MethodContext, StepOutput

__all__ = ["TransitionCorrected", "anchor_transition", "class_mean_transition", "forward_corrected_loss",
           "resolve_warmup"]

#: Entries of ``T`` are floored at the smallest normal float32 before the log (see forward_corrected_loss).
_TINY = torch.finfo(torch.float32).tiny


def anchor_transition(probs: torch.Tensor, percentile: float = 97.0) -> torch.Tensor:
    """Anchor-point estimate of ``T`` (``(C, C)``, float32) from predicted noisy-label probabilities.

    ``probs`` ``(n, C)`` are ``p(noisy label | x)`` of ``n`` samples (rows of a softmax). For each class ``i``
    the anchor ``x_i`` is the sample whose ``probs[:, i]`` sits at the ``percentile`` of that column (rank
    ``ceil(percentile / 100 * (n - 1))`` in ascending order, numpy's ``"higher"`` interpolation, ties broken by
    sample order), and row ``i`` of ``T`` is ``probs[x_i]``. ``percentile=100`` is the argmax of Patrini et al.'s
    estimator; 97 is their robust variant for CIFAR-10.
    """
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"anchor_transition needs probabilities of shape (n >= 1, C), got {tuple(probs.shape)}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    p = probs.float()
    n = p.shape[0]
    # the small slack keeps float error (0.97 * 100 = 97.00000000000001) from moving the rank up by one
    k = min(n - 1, max(0, math.ceil(percentile / 100 * (n - 1) - 1e-9)))
    anchors = p.argsort(dim=0, stable=True)[k]  # (C,): the sample at rank k of every column
    return p[anchors]


def class_mean_transition(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """GLC's estimate ``C_hat`` (``(C, C)``, float32): row ``i`` is the mean of ``probs`` over the samples whose
    (trusted) label is ``i``.

    ``probs`` ``(m, C)`` are ``p(noisy label | x)`` of the trusted samples, ``labels`` ``(m,)`` their true labels.
    A class without trusted samples has no estimate; its row is the identity row (no correction for that class),
    nlbench's choice where the paper is silent.
    """
    if probs.ndim != 2 or probs.shape[1] != num_classes or labels.shape != probs.shape[:1]:
        raise ValueError(f"class_mean_transition needs probs (m, {num_classes}) and labels (m,), got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    p = probs.float()
    onehot = F.one_hot(labels.long(), num_classes).float()  # (m, C)
    counts = onehot.sum(0)  # (C,)
    sums = onehot.T @ p  # (C, C): row i sums the predictions of class-i samples
    eye = torch.eye(num_classes, device=p.device)
    present = (counts > 0).unsqueeze(1)
    return torch.where(present, sums / counts.clamp_min(1).unsqueeze(1), eye)


def forward_corrected_loss(logits: torch.Tensor, targets: torch.Tensor, T: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """Forward-corrected cross-entropy ``-log((softmax(logits) @ T)[y])``, in float32 outside autocast.

    Computed in the log domain as ``-logsumexp_i(log_softmax(logits)_i + log T[i, y])``, so confident logits
    neither underflow nor overflow. Entries of ``T`` are floored at the smallest normal float32 (1.2e-38) before
    the log: a label whose column of ``T`` is all zero then gives a finite loss (at most about 87.3 nats) and
    finite gradients instead of inf and NaN; otherwise the floor changes the loss only where
    ``(softmax @ T)[y]`` is itself below about 1e-38. With ``T = I`` this is cross-entropy.
    """
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"reduction must be mean, none or sum, got {reduction!r}")
    with torch.autocast(logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.float(), dim=1)  # (B, C)
        log_t = T.float().clamp_min(_TINY).log()  # (C, C)
        losses = -torch.logsumexp(log_p + log_t.T[targets.long()], dim=1)  # log_t.T[y][i] = log T[i, y]
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


def resolve_warmup(warmup: int | None, epochs: int) -> int:
    """Epochs of plain cross-entropy before ``T`` is estimated: ``warmup`` (default ``ceil(epochs / 10)``),
    clipped to ``epochs - 1`` so that the last epoch is always corrected; 0 for a 1-epoch run, which then never
    switches (there is no epoch left to estimate ``T`` from)."""
    w = math.ceil(epochs / 10) if warmup is None else int(warmup)
    return max(0, min(w, epochs - 1))


class TransitionCorrected(Method):
    """Base of the loss-correction methods (not registered): cross-entropy on the noisy pool for the warm-up,
    then ``T = self.estimate(model)`` once at the end of the last warm-up epoch, then :meth:`corrected_step`.

    ``reinit=True`` restores the model's initial parameters and buffers (saved at set-up) at the start of the
    first corrected epoch, so the corrected phase retrains from scratch as both papers do; the optimiser's
    momentum buffers belong to the harness and are not reset (as in GLC's official code, which reloads the
    initial weights into the same optimiser).
    """

    def __init__(self, *, warmup: int | None = None, reinit: bool = False):
        super().__init__()
        self.warmup, self.reinit = warmup, bool(reinit)
        #: the estimated transition matrix ``(C, C)``; None until the end of the warm-up
        self.T: torch.Tensor | None = None

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.T = None
        self.warmup_epochs = resolve_warmup(self.warmup, ctx.epochs)
        self._init_state = ({k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
                            if self.reinit and self.warmup_epochs > 0 else None)

    def estimate(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if epoch == self.warmup_epochs:
            self.T = self.estimate(model).detach()

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        # at the start of the first corrected epoch, not right after the estimate: the record of the last warm-up
        # epoch then evaluates the warmed-up network rather than the re-initialised one
        if self._init_state is not None and epoch == self.warmup_epochs + 1:
            model.load_state_dict(self._init_state)
            self._init_state = None

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        if self.T is None:
            return StepOutput(F.cross_entropy(model(batch.x).float(), batch.y))
        return self.corrected_step(batch, model)

    def corrected_step(self, batch: Batch, model: nn.Module) -> StepOutput:
        return StepOutput(forward_corrected_loss(model(batch.x), batch.y, self.T))

    def options(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "reinit": self.reinit}
