"""Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang and Sugiyama, "Co-teaching: robust training of deep neural
networks with extremely noisy labels", NeurIPS 2018), and ``coteaching-meta``, nlbench's variant that estimates
the forget rate from the clean meta set instead of reading the nominal noise rate.

Two networks are trained side by side (the paper's Algorithm 1). On every batch each network ranks the samples
by its own cross-entropy and keeps the ``keep(t) = 1 - r(t)`` fraction with the smallest loss; each network is
then updated on the samples its PEER kept (the cross update), and the method returns the sum of the two mean
losses, so the harness's one optimiser, which holds both networks' parameters, updates both. The fraction
forgotten ramps up linearly over the first ``Tk`` epochs,

    ``r(t) = tau * min(t / Tk, 1)``, with ``t = epoch - 1`` the 0-based epoch index,

the paper's ``R(T) = 1 - min(T tau / Tk, tau)`` (there ``R`` is the fraction kept), so the first epoch trains on
every sample (the official code's schedule also starts at 0 in epoch 0; its ``linspace(0, tau, Tk)`` reaches
``tau`` one epoch earlier, at ``t = Tk - 1``; nlbench follows the paper's formula). Defaults from the paper's
Section 4: ``tau`` is the noise rate, assumed known (``forget_rate=None`` reads the run's nominal rate, so
``coteaching`` declares ``uses_noise_rate`` and is flagged, never ranked with plain methods), and ``Tk = 10`` of
200 epochs.

nlbench's choices:

- ``tk=None`` (default) resolves to ``min(10, max(1, epochs // 3))``: the paper's 10 epochs for runs of 30
  epochs or more (the memorisation protocol ramps over the first third, inside the high-learning-rate phase),
  1 epoch for the 3-epoch short protocol and for a 2-epoch run. An explicit ``tk`` is clipped to
  ``max(1, epochs - 1)``, so the full forget rate is always reached by the last epoch.
- kept count per batch: ``floor((1 - r) * B)`` (the official code's ``int``, with a 1e-6 slack so that float
  error, ``(1 - 0.9) * 10 = 0.99999...``, does not drop a sample), and at least 1, so a small last batch or a
  forget rate near 1 never leaves a network without a sample. Ties in the loss are broken by batch order
  (stable sort).
- evaluation: network 1 (the harness's ``model``); the official code reports both networks, and the second one
  (``ctx.new_model(1)``, stream 1 of the run's seed) is trained but not evaluated. Both networks use the run's
  optimiser and learning-rate schedule (the paper uses Adam with its own schedule).

``coteaching-meta`` (nlbench's variant, not in the paper) reads the clean meta set instead of the nominal rate.
At the end of the first epoch, in which ``r(0) = 0`` so both networks have been trained with plain cross-entropy
on the noisy labels, let ``f`` be their averaged softmax's argmax (eval mode, no gradients), ``a`` its accuracy on
the clean meta set and ``b`` its agreement with the noisy labels of the pool. If ``f(x)`` depends on the true
class only (not on whether the label was flipped) and the noise is symmetric, a flipped label is one of the
``C - 1`` other classes at random, so ``b = a (1 - rho) + (1 - a) rho / (C - 1)`` and

    ``rho_hat = (a - b) / (a - (1 - a) / (C - 1))``, clipped to ``[0, 1 - 1/C]``

(0 when ``a <= 1/C``: a network no better than chance tells nothing, so nothing is forgotten). Under
class-dependent noise a network that has partly learned the flips predicts the noisy class more often than
chance, so ``b`` is larger and the rate is underestimated (the synthetic mixture, 4 classes, 2000 samples,
seed 0: sym20 read as 0.20, sym40 as 0.36, pairflip45 as 0.26; Fashion-MNIST in docs/methods.md). The
estimate is used as ``tau`` from epoch 2 on and is not re-estimated later, since networks trained on small-loss
samples no longer fit the noisy labels. A 1-epoch run never uses it.

GLC's estimator (``1 - mean_i C_hat[i, i]``, see ``glc``) is not used: ``C_hat``'s diagonal holds the network's
own confusion as well as the noise, and on Fashion-MNIST after one epoch it overstated every rate (sym20 read as
0.36 to 0.53, pairflip45 as 0.54 to 0.67, in the grid records made with it up to commit 557d690).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.errors import NLBenchError
from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Range

__all__ = ["CoTeaching", "CoTeachingMeta", "coteaching_select", "forget_rate_at", "kept_count",
           "agreement_noise_rate", "resolve_tk"]


def resolve_tk(tk: int | None, epochs: int) -> int:
    """The ramp length in epochs: ``min(10, max(1, epochs // 3))`` by default, an explicit ``tk`` clipped to
    ``max(1, epochs - 1)``."""
    if tk is None:
        return min(10, max(1, epochs // 3))
    return max(1, min(int(tk), epochs - 1))


def forget_rate_at(t: int, forget_rate: float, tk: int) -> float:
    """``r(t) = forget_rate * min(t / tk, 1)`` for the 0-based epoch index ``t``."""
    return forget_rate * min(max(t, 0) / tk, 1.0)


def kept_count(batch_size: int, forget_rate: float) -> int:
    """How many small-loss samples of a batch are kept: ``floor((1 - forget_rate) * batch_size)``, at least 1."""
    return max(1, min(batch_size, math.floor((1.0 - forget_rate) * batch_size + 1e-6)))


def coteaching_select(loss1: torch.Tensor, loss2: torch.Tensor,
                      forget_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross selection: ``(idx_for_1, idx_for_2)``, batch positions network 1 resp. 2 trains on.

    ``idx_for_2`` are the ``kept_count`` samples with the smallest ``loss1`` (network 1's choice, passed to
    network 2) and ``idx_for_1`` those with the smallest ``loss2``, each in ascending order of the loss (ties in
    batch order).
    """
    k = kept_count(len(loss1), forget_rate)
    chosen_by_1 = torch.argsort(loss1.detach(), stable=True)[:k]
    chosen_by_2 = torch.argsort(loss2.detach(), stable=True)[:k]
    return chosen_by_2, chosen_by_1


def agreement_noise_rate(pool_pred: torch.Tensor, pool_labels: torch.Tensor, meta_pred: torch.Tensor,
                         meta_labels: torch.Tensor, num_classes: int) -> float:
    """The symmetric-noise moment estimate ``(a - b) / (a - (1 - a) / (C - 1))`` clipped to ``[0, 1 - 1/C]``:
    ``a`` is the accuracy of the predicted classes ``meta_pred`` on the clean ``meta_labels``, ``b`` the agreement
    of ``pool_pred`` with the noisy ``pool_labels``, ``C = num_classes``; 0 when ``a <= 1/C``."""
    if pool_pred.shape != pool_labels.shape or meta_pred.shape != meta_labels.shape or pool_pred.ndim != 1 \
            or meta_pred.ndim != 1 or len(pool_pred) == 0 or len(meta_pred) == 0 or num_classes < 2:
        raise ValueError(f"agreement_noise_rate needs non-empty 1-d predictions and labels of equal shapes and "
                         f"at least 2 classes, got {tuple(pool_pred.shape)}, {tuple(pool_labels.shape)}, "
                         f"{tuple(meta_pred.shape)}, {tuple(meta_labels.shape)} and {num_classes} classes")
    a = (meta_pred == meta_labels).double().mean().item()
    b = (pool_pred == pool_labels).double().mean().item()
    chance_gap = a - (1.0 - a) / (num_classes - 1)
    if chance_gap <= 0:
        return 0.0
    return min(max((a - b) / chance_gap, 0.0), 1.0 - 1.0 / num_classes)


@register_method("coteaching")
class CoTeaching(Method):
    """Co-teaching: two networks each pick their small-loss samples of the batch and the peer trains on them.

    The forgotten fraction ramps linearly to the forget rate over the first tk epochs; the default forget rate is
    the run's nominal noise rate (flagged as using it). Network 1 is evaluated.

    Options: ``forget_rate`` (None: the nominal noise rate) and ``tk`` (ramp length in epochs; None:
    ``min(10, max(1, epochs // 3))``, an explicit value is clipped to ``epochs - 1``).
    """

    uses_noise_rate = True

    def __init__(self, *, forget_rate: Annotated[float, Range(0, 1, high_open=True)] | None = None,
                 tk: Annotated[int, Range(1, 100_000)] | None = None):
        super().__init__()
        self.forget_rate, self.tk = forget_rate, tk
        #: the resolved forget rate tau and ramp length (set in setup)
        self.tau: float | None = None
        self.tk_epochs: int | None = None

    def initial_forget_rate(self, ctx: MethodContext) -> float | None:
        if self.forget_rate is not None:
            return float(self.forget_rate)
        if ctx.noise_rate is None:
            raise NLBenchError(f"method {self.name!r} needs the nominal noise rate, or set forget_rate")
        return float(ctx.noise_rate)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.tau = self.initial_forget_rate(ctx)
        self.tk_epochs = resolve_tk(self.tk, ctx.epochs)
        self.net2 = ctx.new_model(1)

    def networks(self) -> list[nn.Module]:
        return [self.net2]

    def current_forget_rate(self, epoch: int) -> float:
        return 0.0 if self.tau is None else forget_rate_at(epoch - 1, self.tau, self.tk_epochs)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        logits1, logits2 = model(batch.x).float(), self.net2(batch.x).float()
        loss1 = F.cross_entropy(logits1, batch.y, reduction="none")
        loss2 = F.cross_entropy(logits2, batch.y, reduction="none")
        for_1, for_2 = coteaching_select(loss1, loss2, self.current_forget_rate(batch.epoch))
        return StepOutput(loss1[for_1].mean() + loss2[for_2].mean())

    def options(self) -> dict[str, Any]:
        return {"forget_rate": self.forget_rate, "tk": self.tk, "forget_rate_used": self.tau,
                "tk_used": self.tk_epochs}


@register_method("coteaching-meta")
class CoTeachingMeta(CoTeaching):
    """Co-teaching whose forget rate is estimated after the first epoch from the clean meta set (nlbench's variant).

    The estimate solves ``b = a (1 - rho) + (1 - a) rho / (C - 1)``, where ``a`` is the two networks' accuracy on
    the meta set and ``b`` their agreement with the pool's noisy labels (exact for symmetric noise, low for
    class-dependent noise); it needs no nominal noise rate. Network 1 is evaluated.

    Options: ``tk`` (ramp length in epochs, as for ``coteaching``).
    """

    uses_noise_rate = False
    uses_meta = True

    def __init__(self, *, tk: Annotated[int, Range(1, 100_000)] | None = None):
        super().__init__(tk=tk)

    def initial_forget_rate(self, ctx: MethodContext) -> float | None:
        return None  # r(0) = 0 in the first epoch anyway; estimated at its end

    def predicted_classes(self, model: nn.Module, *, meta: bool) -> torch.Tensor:
        """Argmax of the two networks' averaged softmax, on the meta set or (``meta=False``) on the pool."""
        predict = self.ctx.predict_meta if meta else self.ctx.predict
        return (predict(model).softmax(dim=1) + predict(self.net2).softmax(dim=1)).argmax(dim=1)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if epoch == 1:
            self.tau = agreement_noise_rate(self.predicted_classes(model, meta=False), self.ctx.train_y,
                                            self.predicted_classes(model, meta=True), self.ctx.meta_y,
                                            self.ctx.num_classes)

    def options(self) -> dict[str, Any]:
        return {"tk": self.tk, "forget_rate_used": self.tau, "tk_used": self.tk_epochs}
