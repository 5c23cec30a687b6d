"""Gold loss correction, GLC (Hendrycks, Mazeika, Wilson and Gimpel, "Using trusted data to train deep networks on
labels corrupted by severe noise", NeurIPS 2018).

GLC estimates the corruption matrix with the trusted (clean) samples (the paper's Section 3, Algorithm 1): a
network trained with cross-entropy on the untrusted (noisy) data only gives ``p(noisy | x)``; row ``i`` of
``C_hat`` is the mean of these predictions over the trusted samples of true class ``i``
(:func:`~nlbench.methods.loss_correction.class_mean_transition`). Training then runs on the union of the two
sets: untrusted samples with the forward-corrected loss ``-log((softmax(z) @ C_hat)[y])``, trusted samples with
plain cross-entropy. In nlbench the clean meta set is the trusted set.

nlbench's choices, all in one training loop of the run's epochs and learning-rate schedule:

- warm-up: the first ``warmup`` epochs are plain cross-entropy on the noisy pool alone (the trusted samples
  must stay unseen, or the predictions on them would be pulled to their clean labels and ``C_hat`` to the
  identity); default ``ceil(epochs / 10)``, clipped to ``epochs - 1``, as for ``forward`` (see its module). A
  1-epoch run never switches: it is ERM.
- estimate: at the end of the last warm-up epoch, the model in eval mode without gradients (under the run's
  autocast) on the whole meta set, in batches. A class without meta samples gets the identity row.
- the union: the harness iterates the pool, so every corrected step adds a trusted batch of
  ``min(batch_size, m)`` meta samples, drawn without replacement with the method's generator (the whole meta set
  when it is smaller than a batch), and runs one forward pass over both (BatchNorm sees them as one batch; the
  inputs of the two sets come from the same distribution). With ``n`` pool and ``m`` meta samples the loss is

      ``n / (n + m) * mean(corrected loss over the pool batch) + m / (n + m) * mean(CE over the trusted batch)``,

  an unbiased estimate of the mean loss over the union, the objective of the official code's batches drawn from
  the union (sum of both parts over the batch size). Each set's weight is its share of the union, so with the
  benchmark's 1000 meta samples the trusted part weighs about 2% on Fashion-MNIST; the trusted batch buys a
  lower-variance estimate of that part at the price of a forward and backward pass of its size. The trusted
  batch is not augmented (the harness augments the pool batch only; ``ctx.meta_x`` is already normalised), as
  in ``finetune``.
- the corrected phase continues training the same network (``reinit=False``, the default; the paper trains a
  second network from scratch after the first has converged): the reasons are ``forward``'s. ``reinit=True``
  restores the initial weights at the start of the first corrected epoch, like the official code, which
  reloads the initial weights into the same optimiser, momentum included.

Sanity-check runs against ERM: docs/methods.md, "Measurements behind the defaults".
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, MethodContext, StepOutput, register_method
from nlbench.methods.loss_correction import TransitionCorrected, class_mean_transition, forward_corrected_loss
from nlbench.options import Range


@register_method("glc")
class GLC(TransitionCorrected):
    """Gold loss correction: corrected loss on the pool, noise matrix from the meta set, plus CE on the meta set.

    The corruption matrix is the class-mean prediction of a warmed-up network on the clean meta set; training
    then uses the forward-corrected loss on the noisy pool and plain cross-entropy on the meta set.

    Options: ``warmup`` (epochs of cross-entropy on the pool before the estimate, default ``ceil(epochs / 10)``,
    clipped to ``epochs - 1``) and ``reinit`` (retrain from the initial weights after the warm-up, default
    false). The estimate is kept as ``self.T``.
    """

    uses_meta = True

    def __init__(self, *, warmup: Annotated[int, Range(1, 100_000)] | None = None, reinit: bool = False):
        super().__init__(warmup=warmup, reinit=reinit)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        n, m = ctx.num_train, len(ctx.meta_y)
        self.pool_share, self.trusted_share = n / (n + m), m / (n + m)

    def estimate(self, model: nn.Module) -> torch.Tensor:
        ctx = self.ctx
        return class_mean_transition(ctx.predict_meta(model).softmax(dim=1), ctx.meta_y, ctx.num_classes)

    def corrected_step(self, batch: Batch, model: nn.Module) -> StepOutput:
        tx, ty = self.ctx.sample_meta(self.ctx.batch_size)
        b = len(batch.y)
        logits = model(torch.cat([batch.x, tx]))
        pool_loss = forward_corrected_loss(logits[:b], batch.y, self.T)
        trusted_loss = F.cross_entropy(logits[b:].float(), ty)
        return StepOutput(self.pool_share * pool_loss + self.trusted_share * trusted_loss)
