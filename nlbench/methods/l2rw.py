"""Learning to Reweight Examples (L2RW; Ren et al. 2018), with the exact one-step meta-gradient.

Each step: ``eps = 0`` (so the virtual step leaves ``theta`` unchanged), the exact scores
``g_i = -dL_V/deps_i`` of the batch against a fresh clean meta batch (see :mod:`nlbench.methods.meta_grad`),
``w_i = max(g_i, 0) / sum_k max(g_k, 0)`` (all zero when no score is positive, as in the paper) and the training
loss ``sum_i w_i l_i``. :func:`l2rw_weights` is the weight function on its own, for use in any training loop.

Choices nlbench makes:

- The meta batch has the run's batch size by default (option ``meta_batch``), drawn from the meta set each
  step with the method's seeded generator (the paper's code iterates a meta loader of the same batch size).
- Telemetry: L2RW's weights sum to 1 over the batch, so they are not on the ``[0, 1]`` scale the telemetry
  (``w_noisy_below_0.1`` etc.) assumes. The step reports ``w_i / max_k w_k`` instead (all zero stays zero): the
  same ranking (AUROC), and "below 0.1" reads as "under a tenth of the batch's largest weight".
- Cost per step: the real forward (recorded, see :class:`~nlbench.methods.meta_grad.RecordedForward`), one
  forward + backward on the meta batch, the tangent half of a forward-mode pass for the ``B`` scores (reusing
  the recorded activations) and the real backward. :func:`l2rw_weights`, which has no forward to reuse, runs a
  full forward-mode pass instead.
"""

from __future__ import annotations

import torch
from torch import nn

from nlbench.methods.base import Batch, StepOutput, register_method
from nlbench.methods.meta_batch import MetaBatchMethod
from nlbench.methods.meta_grad import (
    RecordedForward,
    loss_jvp,
    meta_gradient,
    per_example_losses,
)

__all__ = ["L2RW", "l2rw_weights"]


def _scale_by(w: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """``w / total``, and 0 where ``total`` is 0 (then ``w`` is 0 as well); no host sync on accelerators."""
    return w / total.clamp_min(torch.finfo(w.dtype).tiny)


def _normalise(scores: torch.Tensor) -> torch.Tensor:
    w = scores.clamp_min(0)
    return _scale_by(w, w.sum())


def l2rw_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_meta: torch.Tensor,
                 y_meta: torch.Tensor) -> torch.Tensor:
    """L2RW weights ``(B,)`` of the batch ``(x, y)`` against the clean meta batch ``(x_meta, y_meta)``.

    ``x`` and ``x_meta`` must be model-ready: normalised exactly as the model sees them in training (the
    harness's ``ctx.prep``), not raw uint8 images. ``w_i = max(g_i, 0) / sum_k max(g_k, 0)`` with
    ``g_i = grad L_V(theta)^T grad l_i(theta)``, the exact meta-gradient of Ren et al. at ``eps = 0`` (up to
    the positive factor ``eta / B``, which the normalisation removes). The result is non-negative and sums to 1,
    or is all zero when no score is positive. The model is left as it was: parameters, ``.grad`` and
    BatchNorm running statistics are not changed (training-mode BatchNorm uses batch statistics, as in the step).
    """
    u = meta_gradient(model, x_meta, y_meta)
    _, dl = loss_jvp(model, x, y, u)
    return _normalise(dl)


@register_method("l2rw")
class L2RW(MetaBatchMethod):
    """Ren et al. 2018: per-step weights from the exact meta-gradient at ``eps = 0``; see the module docstring.

    Options: ``meta_batch`` (default: the batch size).
    """

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        x_meta, y_meta = self.next_meta_batch()
        forward = RecordedForward(model, batch.x)  # the real step's forward; its activations give the scores
        u = meta_gradient(model, x_meta, y_meta)
        w = _normalise(forward.loss_tangent(batch.y, u))
        losses = per_example_losses(forward.output, batch.y)
        return StepOutput((w * losses).sum(), _scale_by(w, w.max()))
