"""Two-stage fair baseline: ERM on the noisy pool, then fine-tuning on the clean meta set.

Any method that uses the clean meta set must beat this to claim that its use of the clean data is clever. The
baseline is MW-Net's "Fine-tuning" (Shu, Xie, Yi, Zhao, Zhou, Xu and Meng, "Meta-Weight-Net: Learning an
Explicit Mapping For Sample Weighting", NeurIPS 2019, Section 5.1, baselines: the BaseModel, trained with
cross-entropy on the noisy data, fine-tuned on the clean meta-data), which MW-Net's noisy-label tables report
beside it. MW-Net's code (xjtushujun/meta-weight-net) does not include it, and the paper gives no schedule for it,
so the schedule is nlbench's (below): MW-Net fine-tunes a fully trained BaseModel, while nlbench gives the two
stages one budget, the run's epochs, so that the baseline costs what ERM costs.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Range


@register_method("finetune")
class FineTune(Method):
    """ERM on the noisy pool, then the last epochs fine-tune on the clean meta set alone.

    The first ``epochs - finetune_epochs`` epochs are plain cross-entropy on the noisy pool. In the last
    ``finetune_epochs`` epochs (default: the last fifth of the run, at least one) every step trains on a meta
    batch instead, of the run's batch size, drawn without replacement with the method's generator and
    re-drawn each step, so the fine-tuning stage takes as many steps as a pool epoch (and follows the run's
    learning-rate schedule, which in the step protocols is already decayed by then). nlbench's choice: the
    harness iterates one training set, so the pool batch of a fine-tuning step is ignored rather than the loop
    being copied.
    """

    uses_meta = True

    def __init__(self, *, finetune_epochs: Annotated[int, Range(1, 100_000)] | None = None):
        super().__init__()
        self.finetune_epochs = finetune_epochs

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        k = self.finetune_epochs if self.finetune_epochs is not None else max(1, round(ctx.epochs / 5))
        self.first_finetune_epoch = max(1, ctx.epochs - k + 1) if ctx.epochs > 1 else 1

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        if batch.epoch < self.first_finetune_epoch:
            return StepOutput(F.cross_entropy(model(batch.x).float(), batch.y))
        ctx = self.ctx
        m = len(ctx.meta_y)
        idx = torch.randperm(m, generator=ctx.generator, device=ctx.meta_y.device)[:min(ctx.batch_size, m)]
        return StepOutput(F.cross_entropy(model(ctx.meta_x[idx]).float(), ctx.meta_y[idx]))

    def options(self) -> dict:
        return {"finetune_epochs": self.finetune_epochs}
