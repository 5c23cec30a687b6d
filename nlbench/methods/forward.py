"""Forward loss correction with an anchor-point estimate of the noise (Patrini, Rozza, Krishna Menon, Nock and
Qu, "Making deep neural networks robust to label noise: a loss correction approach", CVPR 2017).

The loss is ``-log((softmax(z) @ T)[y])`` (the paper's forward correction, Theorem 2), with ``T`` estimated from
the noisy pool alone (the paper's Section 4): a network trained with cross-entropy on the noisy labels gives
``p(noisy | x)``; for each class ``i`` the anchor ``x_i`` is the pool sample with (near) highest ``p(i | x)``,
and row ``i`` of ``T`` is ``p(. | x_i)``. The paper takes the argmax, and for CIFAR-10 the 97th percentile of
``p(i | x)`` instead, as more robust to outliers (experiments section; ``filter_outlier`` in the official code);
nlbench's default ``percentile=97`` follows the latter (``percentile=100`` is the argmax). The official code takes
the largest ``p(i | x)`` strictly below the percentile's value; nlbench takes the sample at the percentile's rank
(:func:`~nlbench.methods.loss_correction.anchor_transition`), the next rank up (ties aside).

nlbench's choices, all in one training loop of the run's epochs and learning-rate schedule:

- warm-up: the first ``warmup`` epochs are plain cross-entropy on the noisy pool (default ``ceil(epochs / 10)``:
  1 epoch of the 3-epoch protocol, 3 of the 30-epoch memorisation protocol, 12 of a 120-epoch CIFAR run, all in
  the high-learning-rate phase that precedes memorisation of the noisy labels); clipped to ``epochs - 1`` so the
  last epoch is always corrected (a 2-epoch run warms up 1 epoch). A 1-epoch run never switches: it is ERM.
- estimate: at the end of the last warm-up epoch, from the softmax of ``ctx.predict`` over the whole pool (eval
  mode), the samples the anchors are chosen from (the paper uses the training set too).
- the corrected phase continues training the same network (``reinit=False``, the default): the paper trains
  the estimating network to the end and then trains a second one from scratch, twice the run's budget. Within
  one budget, retraining would leave the corrected network only the last ``epochs - warmup`` epochs of the
  schedule (the decaying two thirds of the 3-epoch protocol's cosine) and would start it with the warm-up's
  momentum (the optimiser belongs to the harness). The default warm-up is meant to end before the network
  memorises the noisy labels, so that continuing keeps most of what retraining would buy. ``reinit=True``
  restores the initial weights (parameters and buffers) at the start of the first corrected epoch instead.

Sanity-check runs against ERM: docs/methods.md, "Measurements behind the defaults".
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from torch import nn

from nlbench.methods.base import register_method
from nlbench.methods.loss_correction import TransitionCorrected, anchor_transition
from nlbench.options import Range


@register_method("forward")
class Forward(TransitionCorrected):
    """Forward loss correction with a noise transition matrix estimated from anchor points of the noisy pool.

    The anchors come from a warmed-up network's predictions on the pool; the method needs no clean data.

    Options: ``warmup`` (epochs of cross-entropy before the estimate, default ``ceil(epochs / 10)``, clipped to
    ``epochs - 1``), ``percentile`` (the anchor's percentile of ``p(i | x)``, default 97; 100 is the argmax) and
    ``reinit`` (retrain from the initial weights after the warm-up, default false). The estimate is kept as
    ``self.T``.
    """

    def __init__(self, *, warmup: Annotated[int, Range(1, 100_000)] | None = None,
                 percentile: Annotated[float, Range(0, 100)] = 97.0, reinit: bool = False):
        super().__init__(warmup=warmup, reinit=reinit)
        self.percentile = float(percentile)

    def estimate(self, model: nn.Module) -> torch.Tensor:
        return anchor_transition(self.ctx.predict(model).softmax(dim=1), self.percentile)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "percentile": self.percentile}
