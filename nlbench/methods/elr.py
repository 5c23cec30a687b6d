"""Early-learning regularisation, ELR (Liu, Niles-Weed, Razavian and Fernandez-Granda, "Early-Learning
Regularization Prevents Memorization of Noisy Labels", NeurIPS 2020).

During early learning a network fits the clean labels first; ELR keeps a running average of its predictions per
training sample, the target ``t_i`` (temporal ensembling), and adds a term that pulls the prediction towards that
target (the paper's methodology section, the regularised loss with temporal-ensembling targets):

    ``t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i)``,
    ``loss = CE(z, y) + lam * mean_i log(1 - <p_i, t_i>)``,

with ``p_i = clamp(softmax(z_i), 1e-4, 1 - 1e-4)`` (the clamp is the official code's, shengliu66/ELR,
``ELR/model/loss.py``; it keeps ``log(1 - <p, t>)`` finite and its gradient bounded). The targets start at 0,
are updated with the detached prediction every time a sample is in a batch (once an epoch), before the loss of
that batch is computed, and receive no gradient; ``p_i`` in the regulariser carries the gradient.

Defaults per noise family, as the official code configures them (``ELR/config_cifar10.json`` for symmetric noise:
``beta = 0.7``, ``lambda = 3``; ``ELR/config_cifar10_asym.json`` for asymmetric noise: ``beta = 0.9``,
``lambda = 1``; the paper's supplementary material lists the same per-setting values). nlbench applies the
asymmetric config to every class-dependent kind (``pairflip``, ``flipback``, ``asym``, ``background``) through
:attr:`~nlbench.methods.base.Method.family_defaults`, and the symmetric one to everything else: symmetric noise,
instance-dependent noise and real human noise, for which the official repository has no config (nlbench's choice;
an explicit ``--opt`` or a preset's tuned value overrides either). The official CIFAR-100 config
(``beta = 0.9``, ``lambda = 7``) is not used. The option is called ``lam`` because ``lambda`` is a Python keyword.

nlbench's choices: plain ELR only (not ELR+, which adds a second network, mixup and weight averaging); the loop,
the optimiser and the learning-rate schedule are the harness's (the official code uses SGD with its own
schedules per dataset); the loss is computed from the float32 logits, whatever the autocast precision. Ignores
the meta set.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Range

__all__ = ["ELR", "elr_loss"]

#: the official code's clamp of the softmax
_CLAMP = 1e-4


def elr_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, beta: float,
             lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, new_targets)`` for one batch: the targets ``(B, C)`` of the batch's samples are updated first,
    ``new = beta * targets + (1 - beta) * p / sum(p)`` (detached), then
    ``loss = CE(logits, y) + lam * mean log(1 - <p, new>)``, all in float32."""
    z = logits.float()
    p = F.softmax(z, dim=1).clamp(_CLAMP, 1.0 - _CLAMP)
    with torch.no_grad():
        q = p.detach()
        new = beta * targets.float() + (1.0 - beta) * q / q.sum(dim=1, keepdim=True)
    reg = torch.log(1.0 - (new * p).sum(dim=1)).mean()
    return F.cross_entropy(z, y) + lam * reg, new


@register_method("elr")
class ELR(Method):
    """Early-learning regularisation: cross-entropy plus a term pulling each prediction towards a running average
    of that sample's past predictions.

    Per-sample targets are an exponential moving average (momentum ``beta``) of the normalised softmax; the loss
    is ``CE + lam * mean log(1 - <p, t>)``. Defaults ``beta=0.7``, ``lam=3`` (the official CIFAR-10 config), and
    ``beta=0.9``, ``lam=1`` on class-dependent noise (its asymmetric-noise config). Ignores the meta set.
    """

    family_defaults = {"class-dependent": {"beta": 0.9, "lam": 1.0}}

    def __init__(self, *, beta: Annotated[float, Range(0, 1, high_open=True)] = 0.7,
                 lam: Annotated[float, Range(0, 1000)] = 3.0):
        super().__init__()
        self.beta, self.lam = float(beta), float(lam)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        #: the per-sample targets ``t`` (num_train, C), float32, 0 until a sample is first seen
        self.targets = torch.zeros(ctx.num_train, ctx.num_classes, device=ctx.device)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        loss, new = elr_loss(model(batch.x), batch.y, self.targets[batch.idx], self.beta, self.lam)
        self.targets[batch.idx] = new
        return StepOutput(loss)

    def options(self) -> dict[str, float]:
        return {"beta": self.beta, "lam": self.lam}
