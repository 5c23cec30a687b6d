"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): the worked example of a one-file method.

A new method is this much code: subclass :class:`~nlbench.methods.base.Method`, take options as keyword
arguments, return the batch loss from :meth:`step`, and register the class with one decorator. Importing the
module (or naming it as an ``nlbench.methods`` entry point in another package) is all the wiring needed.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, StepOutput, register_method
from nlbench.options import Range


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
        log_p = F.log_softmax(model(batch.x).float(), dim=1).gather(1, batch.y.view(-1, 1)).squeeze(1)
        # p^q as exp(q log p): the gradient of p^q itself is infinite at p = 0 and would turn into NaN
        return StepOutput(((1 - torch.exp(self.q * log_p)) / self.q).mean())

    def options(self) -> dict[str, float]:
        return {"q": self.q}
