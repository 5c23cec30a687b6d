"""Empirical risk minimisation and the fair baselines that change only the training data."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nlbench.methods.base import Batch, Method, StepOutput, TrainData, TrainSet, register_method


@register_method("erm")
class ERM(Method):
    """Plain cross-entropy on the noisy pool; ignores the meta set."""

    def step(self, batch: Batch, model) -> StepOutput:
        return StepOutput(F.cross_entropy(model(batch.x), batch.y))


@register_method("erm-meta")
class ERMMeta(ERM):
    """ERM on the noisy pool together with the clean meta set: the same clean data as the reweighting
    methods get, without any reweighting (the fair baseline)."""

    uses_meta = True

    def train_set(self, data: TrainData) -> TrainSet:
        pool = data.pool
        return TrainSet(torch.cat([pool.x, data.meta_x]), torch.cat([pool.y, data.meta_y]),
                        torch.cat([pool.is_noisy, torch.zeros_like(data.meta_y, dtype=torch.bool)]))


@register_method("clean-only")
class CleanOnly(ERM):
    """ERM on the clean meta set alone."""

    uses_meta = True

    def train_set(self, data: TrainData) -> TrainSet:
        return TrainSet(data.meta_x, data.meta_y, torch.zeros_like(data.meta_y, dtype=torch.bool))


@register_method("oracle")
class Oracle(ERM):
    """ORACLE upper bound: ERM on the truly clean part of the noisy pool. It reads ground truth, which no real
    method can, and is flagged as an oracle in every output."""

    oracle = True

    def train_set(self, data: TrainData) -> TrainSet:
        return data.pool.subset(torch.nonzero(~data.pool.is_noisy).squeeze(1))
