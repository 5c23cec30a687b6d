"""The base class of the exact meta-reweighting methods (``l2rw``, ``meta-reweight``, ``mwnet``) and its
``meta_batch`` option. It registers no method itself; the meta-gradients are in :mod:`nlbench.methods.meta_grad`.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch

from nlbench.methods.base import Method, MethodContext
from nlbench.options import Range

__all__ = ["MetaBatchMethod"]


class MetaBatchMethod(Method):
    """Base of the exact meta-reweighting methods: owns the meta set and draws one meta batch per step.

    Option ``meta_batch`` (default: the run's batch size, as in L2RW and MW-Net, whose meta batches equal their
    training batches of 100): each step draws that many distinct meta samples with the method's generator; a
    value of at least the meta-set size uses the whole meta set every step.
    """

    reweights = True
    uses_meta = True

    def __init__(self, *, meta_batch: Annotated[int, Range(1, 1_000_000)] | None = None):
        super().__init__()
        self.meta_batch = meta_batch

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        if self.meta_batch is None:
            self.meta_batch = ctx.batch_size

    def next_meta_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh meta batch ``(x, y)``, model-ready, drawn without replacement with ``ctx.generator``."""
        return self.ctx.sample_meta(self.meta_batch)

    def options(self) -> dict[str, Any]:
        return {"meta_batch": self.meta_batch}
