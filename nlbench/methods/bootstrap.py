"""Bootstrapping (Reed, Lee, Anguelov, Szegedy, Erhan and Rabinovich, "Training Deep Neural Networks on Noisy
Labels with Bootstrapping", ICLR 2015 workshop).

The network's own prediction ``p = softmax(z)`` is mixed into the target: the loss is the cross-entropy of
``p`` against ``beta * onehot(y) + (1 - beta) * t``, where (Section 3 of the paper)

- ``mode="soft"``: ``t = p``, so ``L = beta * CE(y) + (1 - beta) * H(p)``, cross-entropy plus a minimum-entropy
  regulariser that pushes the network towards confident predictions of whatever class it already favours;
- ``mode="hard"``: ``t = onehot(argmax p)``, so ``L = beta * CE(y) + (1 - beta) * CE(argmax p)``.

Defaults: ``mode="soft"``; ``beta = 0.95`` for soft and ``0.8`` for hard, the paper's values (its MNIST
experiments, Section 4.1, where they were chosen by validation; the same values appear in the baselines
``boot_soft``/``boot_hard`` of the official symmetric cross-entropy code). A ``beta`` given explicitly applies to
either mode; ``beta = 1`` is plain cross-entropy.

nlbench's choice on the gradient: in soft mode the gradient flows through ``p`` in the target, as in the
paper's entropy form (and as in the Keras ``boot_soft`` above, which has no stop-gradient). Detaching ``p``,
as several PyTorch reimplementations do, would make the soft variant degenerate: the gradient of
``CE(beta * e_y + (1 - beta) * sg(p), p)`` with respect to the logits is ``p - beta * e_y - (1 - beta) * p =
beta * (p - e_y)``, i.e. exactly ``beta`` times plain cross-entropy, a mere rescaling of the learning rate. In
hard mode ``argmax`` has no gradient, so there is nothing to choose. Losses are computed in float32 from
``log_softmax`` (the Keras code clips ``p`` at ``1e-7``; nlbench does not) and averaged over the batch. The
whole run is bootstrapped from the first step (the paper has no warm-up). The meta set is not used.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, StepOutput, register_method
from nlbench.options import Choice, Range

#: The paper's beta per mode (Reed et al. 2015, Section 4.1).
DEFAULT_BETA = {"soft": 0.95, "hard": 0.8}


def bootstrap_loss(logits: torch.Tensor, y: torch.Tensor, beta: float, mode: str) -> torch.Tensor:
    """Per-sample bootstrapping loss (shape ``(B,)``) of float32 ``logits`` ``(B, C)`` and labels ``y``."""
    log_p = F.log_softmax(logits, dim=1)
    ce = -log_p.gather(1, y.view(-1, 1)).squeeze(1)
    if mode == "soft":
        other = -(log_p.exp() * log_p).sum(1)  # H(p), differentiated through p
    else:
        other = -log_p.gather(1, log_p.argmax(1, keepdim=True)).squeeze(1)
    return beta * ce + (1 - beta) * other


@register_method("bootstrap")
class Bootstrap(Method):
    """Bootstrapping: cross-entropy against a mix of the noisy label and the network's own (soft or hard)
    prediction.

    Options: ``mode`` (``soft`` or ``hard``, default ``soft``) and ``beta`` (weight of the noisy label; default
    0.95 for soft and 0.8 for hard, the paper's values). Ignores the meta set.
    """

    def __init__(self, *, mode: Annotated[str, Choice("soft", "hard")] = "soft",
                 beta: Annotated[float, Range(0, 1)] | None = None):
        super().__init__()
        self.mode = mode
        self.beta = DEFAULT_BETA[mode] if beta is None else float(beta)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        logits = model(batch.x).float()
        return StepOutput(bootstrap_loss(logits, batch.y, self.beta, self.mode).mean())

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "beta": self.beta}
