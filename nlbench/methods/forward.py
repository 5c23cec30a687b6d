"""Forward loss correction with an anchor-point estimate of the noise (Patrini, Rozza, Krishna Menon, Nock and
Qu, "Making deep neural networks robust to label noise: a loss correction approach", CVPR 2017).

The loss is ``-log((softmax(z) @ T)[y])`` (the paper's forward correction, Theorem 2), with ``T`` estimated from
the noisy training data alone (the paper's Section 4): a network trained with cross-entropy on the noisy labels
gives ``p(noisy | x)``; for each class ``i`` the anchor ``x_i`` is a sample with (near) highest ``p(i | x)``, and
row ``i`` of ``T`` is ``p(. | x_i)``. The paper takes the argmax, and for CIFAR-10 a 97th-percentile filter as
more robust to outliers (experiments section).

Default protocol (``two_stage=true``), the official code's (giorgiop/loss-correction: ``experiment.py``
``train_and_evaluate``, run first with ``-l crossentropy`` and then with ``-l est_forward``; ``models.py``
``KerasModel.fit_model`` and ``NoiseEstimator``; ``loss.py`` ``robust("forward", P)``), in the harness's one
loop as two stages of the run's ``epochs`` each (:class:`~nlbench.methods.loss_correction.TransitionCorrected`):

1. a network trained with cross-entropy on the noisy pool for ``epochs`` epochs; after every epoch its
   cross-entropy on the noisy validation split (the softmax clipped to ``[1e-7, 1 - 1e-7]``, Keras'
   ``crossentropy``) is measured and the network of the lowest loss kept (the first of equal ones), as the
   official ``ModelCheckpoint(monitor="val_loss", save_best_only=True)`` and the ``load_model`` after ``fit``;
   a run without a validation split (``val_size = 0``, the short grid's setting) keeps its last epoch;
2. ``T`` from that network's softmax, in eval mode, over the pool and the validation split (the official code
   predicts on its whole ``X_train``, validation part included) by the official anchor rule
   (:func:`~nlbench.methods.loss_correction.anchor_transition`: ``filter_outlier`` with the 97th percentile,
   ``np.percentile(..., interpolation="higher")``, the largest ``p(i | x)`` strictly below it, the columns
   zeroed in place as the official view does, rows normalised; ``percentile=100`` is the argmax,
   ``filter_outlier=False``);
3. the initial network trained again for ``epochs`` epochs on the corrected loss, with the learning-rate
   schedule restarted and a fresh optimiser (the official ``est_forward`` run is a new run).

Differences from the official code (what the harness fixes for every method aside):

- stage 2 restarts from the run's own initial weights; the official ``est_forward`` run builds a new network,
  a new draw from the same initialisation (in another process);
- the validation loss omits the L2 penalty Keras adds to ``val_loss`` for the CIFAR ResNet's regularised
  kernels (nlbench's weight decay lives in the optimiser; the official MNIST and IMDB models have none);
- the official code keeps the best stage-2 epoch by its (corrected) validation loss too and reports that
  network's test accuracy; nlbench records every stage-2 epoch's test and noisy-validation accuracy, and the
  record's ``final`` (last, best, last five epochs) is stage 2's, the noisy-val selected accuracy is derived
  by the leaderboard;
- the corrected loss is computed in the log domain with ``T`` floored at 1.2e-38
  (:func:`~nlbench.methods.loss_correction.forward_corrected_loss`); the official Keras loss clips the softmax
  to ``[1e-7, 1 - 1e-7]`` before multiplying by ``T``; the two differ only for probabilities below 1e-7;
- the official rule's percentile is numpy's: with numpy < 1.22 its rank is one higher where
  ``0.97 * (n - 1)`` is a whole number (n = 101, 201, ...) through float error; nlbench takes the exact rank.

``two_stage=false`` is nlbench's earlier one-network variant, unchanged and with the same numbers: ``warmup``
epochs of cross-entropy (default ``ceil(epochs / 10)``, clipped to ``epochs - 1``; a 1-epoch run never
switches), ``T`` at the warm-up's end from the pool only with the rank rule
(:func:`~nlbench.methods.loss_correction.rank_anchor_transition`: the sample at the percentile's rank, one
rank above the official anchor, unnormalised), then the corrected loss for the rest of the same run's schedule,
continuing the same network (``reinit=true``: from the initial weights, into the same optimiser). It costs one
run's epochs where the official protocol costs two, and its corrected network sees only the decaying rest of
the schedule.

Sanity-check runs against ERM: docs/methods.md, "Measurements behind the defaults".
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from nlbench.methods.base import register_method
from nlbench.methods.loss_correction import TransitionCorrected, anchor_transition, rank_anchor_transition
from nlbench.options import Range


@register_method("forward")
class Forward(TransitionCorrected):
    """Forward loss correction with a noise transition matrix estimated from anchor points of the noisy data.

    Two stages by default, as the official code: a cross-entropy network (the best epoch on the noisy
    validation split, when there is one) gives the anchors, then the initial network is trained again on the
    corrected loss; the method needs no clean data.

    Options: ``two_stage`` (default true; false is the one-network variant), ``percentile`` (the anchor filter's
    percentile of ``p(i | x)``, default 97 as the official code for every dataset but CIFAR-100; 100 is the
    argmax) and, with ``two_stage=false`` only, ``warmup`` (epochs of cross-entropy before the estimate,
    default ``ceil(epochs / 10)``, clipped to ``epochs - 1``) and ``reinit`` (retrain from the initial weights
    after the warm-up, default false). The estimate is kept as ``self.T``.
    """

    select_on_val: ClassVar[bool] = True
    #: 2: the official two-stage protocol became the default (version-1 records trained one network)
    version = 2

    def __init__(self, *, two_stage: bool = True, warmup: Annotated[int, Range(1, 100_000)] | None = None,
                 percentile: Annotated[float, Range(0, 100)] = 97.0, reinit: bool = False):
        super().__init__(two_stage=two_stage, warmup=warmup, reinit=reinit)
        self.percentile = float(percentile)

    def estimate(self, model: nn.Module) -> torch.Tensor:
        ctx = self.ctx
        logits = ctx.predict(model)
        if not self.two_stage:
            return rank_anchor_transition(logits.softmax(dim=1), self.percentile)
        if ctx.val_y is not None and len(ctx.val_y):  # the official code predicts on all of its X_train
            logits = torch.cat([logits, ctx.predict(model, ctx.val_x)])
        return anchor_transition(logits.softmax(dim=1), self.percentile)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "percentile": self.percentile}
