"""Gold loss correction, GLC (Hendrycks, Mazeika, Wilson and Gimpel, "Using trusted data to train deep networks on
labels corrupted by severe noise", NeurIPS 2018).

GLC estimates the corruption matrix with the trusted (clean) samples (the paper's Section 3, Algorithm 1): a
network trained with cross-entropy on the untrusted (noisy) data only gives ``p(noisy | x)``; row ``i`` of
``C_hat`` is the mean of these predictions over the trusted samples of true class ``i``
(:func:`~nlbench.methods.loss_correction.class_mean_transition`). Training then runs on the union of the two
sets: untrusted samples with the forward-corrected loss ``-log((softmax(z) @ C_hat)[y])``, trusted samples with
plain cross-entropy. In nlbench the clean meta set is the trusted set.

Default protocol (``two_stage=true``), the official code's (mmazeika/glc ``CIFAR/train_ours.py``: ``train_phase1``
for ``args.epochs``, ``get_C_hat_transpose``, the reset of ``state['tt']`` and the learning rate, the
``load_state_dict`` of the saved ``_init.pytorch`` weights, ``train_phase2`` for ``args.epochs``), in the
harness's one loop as two stages of the run's ``epochs`` each
(:class:`~nlbench.methods.loss_correction.TransitionCorrected`):

1. cross-entropy on the noisy pool alone for ``epochs`` epochs (the trusted samples stay unseen, or the
   predictions on them would be pulled to their clean labels and ``C_hat`` to the identity);
2. ``C_hat`` from the last stage-1 epoch's network (the official code selects nothing: it has no validation
   split), in eval mode without gradients (under the run's autocast) on the whole meta set, in batches, as the
   official ``train_gold_deterministic_loader`` (test transform, ``net.eval()``);
3. the initial weights (parameters and buffers) restored and trained for ``epochs`` epochs on the union, with
   the learning-rate schedule restarted and the SAME optimiser, momentum buffers included: the official code
   reloads the initial weights into the optimiser of phase 1 and only resets its learning rate
   (``keep_optimizer_state``).

The union in stage 2: the harness iterates the pool, so every corrected step adds a trusted batch of
``min(batch_size, m)`` meta samples, drawn without replacement with the method's generator (the whole meta set
when it is smaller than a batch), and runs one forward pass over both (BatchNorm sees them as one batch; the
inputs of the two sets come from the same distribution). With ``n`` pool and ``m`` meta samples the loss is

    ``n / (n + m) * mean(corrected loss over the pool batch) + m / (n + m) * mean(CE over the trusted batch)``,

an unbiased estimate of the mean loss over the union, the objective of the official code's batches drawn from
the union (``(loss_g + loss_s) / args.batch_size``, both parts summed over the batch).

Differences from the official code (what the harness fixes for every method aside):

- the union's batches: the official code shuffles gold and silver samples together (``train_all_loader``,
  ``len(union) / batch_size`` steps an epoch); nlbench steps over the pool and adds a trusted batch to every
  step (above): the same expected loss, a lower-variance estimate of the trusted part at the price of a
  forward and backward pass of its size, and an epoch of ``len(pool) / batch_size`` steps. With the
  benchmark's 1000 meta samples the trusted part weighs about 2% on Fashion-MNIST. The trusted batch is not
  augmented (the harness augments the pool batch only; ``ctx.meta_x`` is already normalised), as in
  ``finetune``; the official code augments both;
- a class without trusted samples gets the identity row of ``C_hat``; the official mean of nothing is NaN;
- the corrected loss is computed in the log domain with ``C_hat`` floored at 1.2e-38
  (:func:`~nlbench.methods.loss_correction.forward_corrected_loss`); the official ``-log(sum(softmax * C_hat^T[y]))``
  is the same loss without the floor.

``two_stage=false`` is nlbench's earlier one-network variant, unchanged and with the same numbers: a
``warmup`` of cross-entropy on the pool (default ``ceil(epochs / 10)``, clipped to ``epochs - 1``; a 1-epoch run
never switches), ``C_hat`` at its end, then the union's corrected loss for the rest of the same run's schedule,
continuing the same network (``reinit=true``: from the initial weights, into the same optimiser). It costs one
run's epochs where the official protocol costs two.

Sanity-check runs against ERM: docs/methods.md, "Measurements behind the defaults".
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, MethodContext, StepOutput, register_method
from nlbench.methods.loss_correction import TransitionCorrected, class_mean_transition, forward_corrected_loss
from nlbench.options import Range


@register_method("glc")
class GLC(TransitionCorrected):
    """Gold loss correction: corrected loss on the pool, noise matrix from the meta set, plus CE on the meta set.

    Two stages by default, as the official code: a network trained with cross-entropy on the pool gives the
    corruption matrix (its class-mean prediction on the clean meta set), then the initial network is trained
    again with the forward-corrected loss on the noisy pool and plain cross-entropy on the meta set.

    Options: ``two_stage`` (default true; false is the one-network variant) and, with ``two_stage=false`` only,
    ``warmup`` (epochs of cross-entropy on the pool before the estimate, default ``ceil(epochs / 10)``, clipped
    to ``epochs - 1``) and ``reinit`` (retrain from the initial weights after the warm-up, default false). The
    estimate is kept as ``self.T``.
    """

    uses_meta = True
    keep_optimizer_state: ClassVar[bool] = True
    #: 2: the official two-stage protocol became the default (version-1 records trained one network)
    version = 2

    def __init__(self, *, two_stage: bool = True, warmup: Annotated[int, Range(1, 100_000)] | None = None,
                 reinit: bool = False):
        super().__init__(two_stage=two_stage, warmup=warmup, reinit=reinit)

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
