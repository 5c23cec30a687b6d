"""Generalized cross-entropy (Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural Networks
with Noisy Labels", NeurIPS 2018): ``gce``, the Lq loss and the worked example of a one-file method, and
``gce-trunc``, the truncated Lq loss with pruning, which gives the paper's best numbers.

A new method is this much code: subclass :class:`~nlbench.methods.base.Method`, take options as keyword
arguments, return the batch loss from :meth:`step`, and register the class with one decorator. Importing the
module (or naming it as an ``nlbench.methods`` entry point in another package) is all the wiring needed.

``gce-trunc`` (the paper's Section 3.3, "truncated Lq loss"): ``L_trunc = Lq(k)`` where ``p_y <= k`` and
``Lq(p_y)`` above, optimised by alternating (the paper's Algorithm 1): per-sample weights ``w_i`` in {0, 1} are
set by "pruning", ``w_i = 1`` iff ``Lq(p_y) < Lq(k)`` (i.e. ``p_y > k``) under a chosen model, and between
prunings the loss is ``mean_i w_i (Lq(p_y) - Lq(k))``: a pruned sample contributes nothing. The authors did not
release code; the implementation the literature uses is AlanChou/Truncated-Loss (``TruncatedLoss.py``:
``forward`` and ``update_weight``; ``main.py``: the schedule), which nlbench follows:

- every weight starts at 1 (so before the first pruning the gradient is the Lq loss's);
- the loss is the batch MEAN (the repository's choice; its README notes the paper sums);
- ``k = 0.5``, ``q = 0.7`` (the paper's Section 4);
- pruning before epochs ``40, 50, ..., 120`` of 120 for CIFAR-10 (``--start_prune 40``, every 10 epochs), from
  the model of the best epoch so far. The paper selects that model on a validation split; the repository uses
  the best TEST accuracy (its README says so and calls it optimistic). nlbench uses the best noisy-validation
  accuracy when the run has ``--val-size``, and the current model otherwise, never the test set.

Scaled to the protocol, in one place (:func:`prune_epochs`): each pruning epoch of the reference keeps its
proportion of the run, rounded half up and never before epoch 2 (a model must have trained): all nine prunings
at 10, 13, 15, 18, 20, 23, 25, 28 and 30 for the 30-epoch memorisation protocol; 2 and 3 for a 3-epoch run.

Further differences from the reference, and why:

- in its pruning epochs the reference reloads copies of the network from disk and then trains the reloaded copy,
  which its optimiser (built on the original parameters) never steps, so those 9 of its 120 epochs learn
  nothing; nlbench trains every epoch (a bug, not a method choice);
- the reference computes the pruning losses on augmented images (its training loader); nlbench on the training
  inputs the run trains on, in eval mode (no augmentation in the Fashion-MNIST protocols);
- its CIFAR-100 schedule (prune from epoch 80 of 150) is not used: one schedule, by proportion, for every run;
- the optimiser and its schedule are the harness's (the repository uses SGD 0.01, x0.1 at epochs 40 and 80).

The weights are reported as the method's sample weights (weight telemetry: AUROC of ``w`` against the noisy mask).
"""

from __future__ import annotations

import copy
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Range

#: The pruning schedule of the reference implementation (AlanChou/Truncated-Loss, ``main.py``, CIFAR-10):
#: first pruning before epoch 40 of 120, then every 10 epochs.
PRUNE_START, PRUNE_EVERY, PRUNE_OF = 40, 10, 120


def lq_loss(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample ``Lq = (1 - p_y^q) / q`` (shape ``(B,)``) of float32 ``logits`` and labels ``y``."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
    # p^q as exp(q log p): the gradient of p^q itself is infinite at p = 0 and would turn into NaN
    return (1 - torch.exp(q * log_p)) / q


def truncated_lq_loss(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, q: float,
                      k: float) -> torch.Tensor:
    """Per-sample truncated loss between prunings, ``w * (Lq(p_y) - Lq(k))`` (shape ``(B,)``)."""
    return weights * (lq_loss(logits, y, q) - (1 - k ** q) / q)


def prune_weights(logits: torch.Tensor, y: torch.Tensor, q: float, k: float) -> torch.Tensor:
    """The pruning step: 1.0 where ``Lq(k) > Lq(p_y)`` (the sample is kept), else 0.0 (float32, ``(n,)``)."""
    return ((1 - k ** q) / q > lq_loss(logits, y, q)).float()


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def prune_epochs(epochs: int) -> list[int]:
    """The epochs (1-based) before which ``gce-trunc`` prunes: each epoch of the reference schedule (40, 50, ...,
    120 of 120) mapped to ``epochs`` by its proportion of the run, rounded half up, never before epoch 2 (a model
    must have trained), duplicates merged."""
    reference = range(PRUNE_START, PRUNE_OF + 1, PRUNE_EVERY)
    return sorted({max(2, _round_half_up(epochs * e / PRUNE_OF)) for e in reference if epochs >= 2})


@register_method("gce")
class GCE(Method):
    """Generalized cross-entropy ``L_q = (1 - p_y^q) / q`` on the noisy pool, averaged over the batch.

    ``q`` in (0, 1] interpolates between cross-entropy (``q -> 0``) and MAE (``q = 1``, robust to symmetric
    noise but slow to fit); the paper's default is ``q = 0.7``. Ignores the meta set.
    """

    def __init__(self, q: Annotated[float, Range(0, 1, low_open=True)] = 0.7):
        super().__init__()
        self.q = float(q)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        return StepOutput(lq_loss(model(batch.x), batch.y, self.q).mean())

    def options(self) -> dict[str, float]:
        return {"q": self.q}


@register_method("gce-trunc")
class TruncatedGCE(Method):
    """Truncated Lq loss with pruning: samples whose ``p_y`` is at most ``k`` under the best model so far are
    dropped from the loss, re-decided on the paper's schedule scaled to the run.

    Options: ``q`` (default 0.7) and ``k`` (the truncation point, default 0.5), the paper's values. The pruning
    model is the best epoch on the noisy validation split when the run has one, else the current model. Ignores
    the meta set.
    """

    reweights = True

    def __init__(self, *, q: Annotated[float, Range(0, 1, low_open=True)] = 0.7,
                 k: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5):
        super().__init__()
        self.q, self.k = float(q), float(k)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.weights = torch.ones(ctx.num_train, device=ctx.device)
        self.prune_at = prune_epochs(ctx.epochs)
        self.best_val = -1.0
        #: the weights of the best epoch on the noisy validation split (None without one)
        self.best_net = copy.deepcopy(ctx.model) if ctx.val_y is not None and len(ctx.val_y) else None
        self.pruned_share = 0.0  # every weight is 1 until the first pruning

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if epoch in self.prune_at:
            judge = model if self.best_net is None or self.best_val < 0 else self.best_net
            self.weights = prune_weights(self.ctx.predict(judge), self.ctx.train_y, self.q, self.k)
            self.pruned_share = 1.0 - self.weights.mean().item()

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        w = self.weights[batch.idx]
        return StepOutput(truncated_lq_loss(model(batch.x), batch.y, w, self.q, self.k).mean(), weights=w)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if self.best_net is not None and (acc := self.ctx.val_accuracy(model)) is not None and acc > self.best_val:
            self.best_val = acc
            self.best_net.load_state_dict(model.state_dict())

    def epoch_log(self) -> dict[str, float]:
        return {"pruned_share": self.pruned_share}

    def sample_weights(self) -> torch.Tensor:
        return self.weights

    def options(self) -> dict[str, float]:
        return {"q": self.q, "k": self.k}
