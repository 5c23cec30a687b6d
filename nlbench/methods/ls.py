"""Label smoothing (Szegedy, Vanhoucke, Ioffe, Shlens and Wojna, "Rethinking the Inception Architecture for
Computer Vision", CVPR 2016, Section 7), as a noisy-label baseline (Lukasik, Bhojanapalli, Menon and Kumar,
"Does label smoothing mitigate label noise?", ICML 2020).

The loss is the cross-entropy of ``p = softmax(z)`` against the smoothed target
``(1 - epsilon) * onehot(y) + epsilon / C``: ``L = (1 - epsilon) * CE(y) + epsilon * mean_k(-log p_k)``.
Lukasik et al. show that smoothing acts as a shrinkage regulariser that partly counters symmetric label noise.

Default ``epsilon = 0.1``, Szegedy et al.'s value (Section 7, with the uniform prior ``u(k) = 1/K``); Lukasik
et al. sweep ``epsilon`` instead of fixing one. The smoothing mass ``epsilon / C`` also lands on the labelled
class, as in Szegedy et al.'s formula and ``torch``'s ``label_smoothing`` (which nlbench uses), so the target's
labelled entry is ``1 - epsilon + epsilon / C``. Computed in float32 and averaged over the batch. The meta set
is not used.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, StepOutput, register_method
from nlbench.options import Range


@register_method("ls")
class LabelSmoothing(Method):
    """Label smoothing: cross-entropy against (1 - epsilon) times the one-hot noisy label plus epsilon / C.

    Option: ``epsilon`` in [0, 1), default 0.1 (Szegedy et al. 2016); ``epsilon = 0`` is plain cross-entropy.
    Ignores the meta set.
    """

    def __init__(self, *, epsilon: Annotated[float, Range(0, 1, high_open=True)] = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        return StepOutput(F.cross_entropy(model(batch.x).float(), batch.y, label_smoothing=self.epsilon))

    def options(self) -> dict[str, float]:
        return {"epsilon": self.epsilon}
