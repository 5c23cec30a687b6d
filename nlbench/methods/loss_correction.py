"""Loss correction with a class-transition matrix: the shared parts of ``forward`` and ``glc``.

Both methods model class-conditional label noise with a row-stochastic matrix ``T``,
``T[i, j] = p(noisy label j | true class i)``, estimate it from a network trained with cross-entropy on the
noisy pool, and then train on the forward-corrected loss ``-log((softmax(z) @ T)[y])``: the network's output is
read as the clean posterior and pushed through the noise before it meets the noisy label (Patrini et al.,
CVPR 2017, Theorem 2). They differ in the estimator:

- :func:`anchor_transition` (``forward``): anchor points found on the noisy training data itself, by the
  official code's rule (``NoiseEstimator`` in giorgiop/loss-correction ``models.py``);
- :func:`class_mean_transition` (``glc``): class means of the predictions on trusted (clean) samples.

The helpers are pure functions of tensors. :class:`TransitionCorrected` is the unregistered base class of the
two methods (``forward.py``, ``glc.py``). By default (``two_stage=True``) it follows both official protocols:

1. stage 1 trains the run's network with cross-entropy on the noisy pool for the run's ``epochs`` (the
   official codes train their estimating network to the end of its own schedule);
2. at the stage boundary (:meth:`~nlbench.methods.base.Method.on_stage_start`) the estimating network is
   chosen (``forward``: the stage-1 epoch with the lowest cross-entropy on the noisy validation split when the
   run has one, as the official Keras ``ModelCheckpoint(monitor="val_loss", save_best_only=True)``; the last
   stage-1 epoch otherwise, and always for ``glc``, whose official code has no validation split), ``T`` is
   estimated from it, and the network's initial weights (parameters and buffers, saved at set-up) are
   restored;
3. stage 2 trains that network again for ``epochs`` epochs on the corrected loss, with the learning-rate
   schedule restarted (both official codes) and a fresh optimiser for ``forward`` (its official second run
   builds a new one) or the same optimiser, momentum included, for ``glc`` (its official code reuses it).

The harness runs both stages in its one loop (:meth:`~nlbench.methods.base.Method.stages`): ``2 * epochs``
epochs in all, each history entry marked with its stage, and the record's ``final`` summarising stage 2.

``two_stage=False`` is nlbench's earlier one-network variant, unchanged (same numbers): a warm-up of
``warmup`` epochs of cross-entropy (default ``ceil(epochs / 10)``), ``T`` estimated at its end, and the
corrected loss for the rest of the same run and schedule, continuing the same network (``reinit=True``
restores the initial weights instead, into the same optimiser); ``forward`` then takes its anchors from the
pool only with :func:`rank_anchor_transition`. It costs one run's epochs instead of two.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.errors import NLBenchError
from nlbench.methods.base import Batch, Method, MethodContext, StepOutput

__all__ = ["TransitionCorrected", "anchor_transition", "class_mean_transition", "forward_corrected_loss",
           "keras_crossentropy", "rank_anchor_transition", "resolve_warmup"]

#: Entries of ``T`` are floored at the smallest normal float32 before the log (see forward_corrected_loss).
_TINY = torch.finfo(torch.float32).tiny
#: Keras' ``K.epsilon()``: the official forward code clips probabilities to ``[eps, 1 - eps]`` in its losses.
KERAS_EPSILON = 1e-7


def _percentile_rank(percentile: float, n: int) -> int:
    """Rank (ascending, from 0) of numpy's ``np.percentile(a, percentile, method="higher")`` in ``n`` values:
    ``ceil(percentile / 100 * (n - 1))``."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    # the small slack keeps float error (0.97 * 100 = 97.00000000000001) from moving the rank up by one, as
    # numpy >= 1.22 computes it (numpy < 1.22 took the float product's ceiling: one rank higher where
    # percentile * (n - 1) / 100 is a whole number, e.g. n = 101)
    return min(n - 1, max(0, math.ceil(percentile / 100 * (n - 1) - 1e-9)))


def anchor_transition(probs: torch.Tensor, percentile: float = 97.0) -> torch.Tensor:
    """Anchor-point estimate of ``T`` (``(C, C)``, float32) by the official rule of Patrini et al.

    ``probs`` ``(n, C)`` are ``p(noisy label | x)`` of ``n`` samples (rows of a softmax). This computes what
    ``NoiseEstimator(filter_outlier=True).fit(X).predict()`` computes in giorgiop/loss-correction
    ``models.py`` (``row_normalize=True``, ``alpha=0``, ``cliptozero=False``, as ``experiment.py`` calls it),
    with its percentile, 97 there, as ``percentile``. For each class ``i`` in turn:

    - ``thresh`` is the ``percentile`` of column ``i`` (``np.percentile(..., interpolation="higher")``: the
      value at rank ``ceil(percentile / 100 * (n - 1))`` in ascending order);
    - every entry of column ``i`` at or above ``thresh`` is set to 0, in the matrix itself (the official
      ``robust_eta`` is a view of it), and the anchor is the first sample with the largest remaining value:
      the largest ``p(i | x)`` strictly below ``thresh``;
    - row ``i`` of ``T`` is the anchor's row of the (zeroed) matrix.

    Then every row is divided by its sum. The zeroing is visible in later rows only where an anchor of class
    ``i`` has ``p(j | x)`` at or above the threshold of an earlier class ``j``. ``percentile=100`` is
    ``filter_outlier=False`` (the official choice for CIFAR-100): the plain argmax of every column, unzeroed.
    A row that sums to 0 (only possible when the zeroing removes all of it) is the identity row, where the
    official code would divide by zero.
    """
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"anchor_transition needs probabilities of shape (n >= 1, C), got {tuple(probs.shape)}")
    k = _percentile_rank(percentile, probs.shape[0])
    p = probs.float().clone()
    c = p.shape[1]
    if percentile == 100:
        T = p[p.argmax(dim=0)]
    else:
        T = torch.empty(c, c, dtype=p.dtype, device=p.device)
        for i in range(c):
            col = p[:, i]  # a view: the zeroing below changes p, as the official code changes eta_corr
            thresh = col.sort().values[k]
            col[col >= thresh] = 0.0
            T[i] = p[col.argmax()]  # torch.argmax returns the first maximum, as np.argmax does
    sums = T.sum(dim=1, keepdim=True)
    eye = torch.eye(c, dtype=T.dtype, device=T.device)
    return torch.where(sums > 0, T / sums.clamp_min(_TINY), eye)


def rank_anchor_transition(probs: torch.Tensor, percentile: float = 97.0) -> torch.Tensor:
    """The anchor rule of nlbench's one-network variant (``forward`` with ``two_stage=false``), kept so that
    variant computes what it always did: for each class ``i`` the anchor is the sample at the ``percentile``'s
    rank of ``probs[:, i]`` (rank ``ceil(percentile / 100 * (n - 1))`` in ascending order, ties broken by
    sample order), and row ``i`` of ``T`` is ``probs`` of it, unnormalised. Against :func:`anchor_transition`
    (the official rule): one rank higher (ties aside), no zeroing and no row normalisation.
    ``percentile=100`` is the argmax in both."""
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"anchor_transition needs probabilities of shape (n >= 1, C), got {tuple(probs.shape)}")
    p = probs.float()
    k = _percentile_rank(percentile, p.shape[0])
    anchors = p.argsort(dim=0, stable=True)[k]  # (C,): the sample at rank k of every column
    return p[anchors]


def class_mean_transition(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """GLC's estimate ``C_hat`` (``(C, C)``, float32): row ``i`` is the mean of ``probs`` over the samples whose
    (trusted) label is ``i`` (``get_C_hat_transpose`` in mmazeika/glc ``CIFAR/train_ours.py``, transposed back).

    ``probs`` ``(m, C)`` are ``p(noisy label | x)`` of the trusted samples, ``labels`` ``(m,)`` their true labels.
    A class without trusted samples has no estimate; its row is the identity row (no correction for that class),
    nlbench's choice where the official code's mean of nothing is a row of NaN.
    """
    if probs.ndim != 2 or probs.shape[1] != num_classes or labels.shape != probs.shape[:1]:
        raise ValueError(f"class_mean_transition needs probs (m, {num_classes}) and labels (m,), got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    p = probs.float()
    onehot = F.one_hot(labels.long(), num_classes).float()  # (m, C)
    counts = onehot.sum(0)  # (C,)
    sums = onehot.T @ p  # (C, C): row i sums the predictions of class-i samples
    eye = torch.eye(num_classes, device=p.device)
    present = (counts > 0).unsqueeze(1)
    return torch.where(present, sums / counts.clamp_min(1).unsqueeze(1), eye)


def forward_corrected_loss(logits: torch.Tensor, targets: torch.Tensor, T: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """Forward-corrected cross-entropy ``-log((softmax(logits) @ T)[y])``, in float32 outside autocast.

    Computed in the log domain as ``-logsumexp_i(log_softmax(logits)_i + log T[i, y])``, so confident logits
    neither underflow nor overflow. Entries of ``T`` are floored at the smallest normal float32 (1.2e-38) before
    the log: a label whose column of ``T`` is all zero then gives a finite loss (at most about 87.3 nats) and
    finite gradients instead of inf and NaN; otherwise the floor changes the loss only where
    ``(softmax @ T)[y]`` is itself below about 1e-38. With ``T = I`` this is cross-entropy.
    """
    if reduction not in ("mean", "none", "sum"):
        raise ValueError(f"reduction must be mean, none or sum, got {reduction!r}")
    with torch.autocast(logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.float(), dim=1)  # (B, C)
        log_t = T.float().clamp_min(_TINY).log()  # (C, C)
        losses = -torch.logsumexp(log_p + log_t.T[targets.long()], dim=1)  # log_t.T[y][i] = log T[i, y]
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


def keras_crossentropy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy as the official forward code computes it (``crossentropy`` in giorgiop/loss-correction
    ``loss.py``): the softmax clipped to ``[1e-7, 1 - 1e-7]`` before the log; in float32."""
    if len(targets) == 0:
        return math.nan
    p = logits.float().softmax(dim=1).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -p.gather(1, targets.long().view(-1, 1)).log().mean().item()


def resolve_warmup(warmup: int | None, epochs: int) -> int:
    """Epochs of plain cross-entropy before ``T`` is estimated in the one-network variant: ``warmup`` (default
    ``ceil(epochs / 10)``), clipped to ``epochs - 1`` so that the last epoch is always corrected; 0 for a 1-epoch
    run, which then never switches (there is no epoch left to estimate ``T`` from)."""
    w = math.ceil(epochs / 10) if warmup is None else int(warmup)
    return max(0, min(w, epochs - 1))


def _copy_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class TransitionCorrected(Method):
    """Base of the loss-correction methods (not registered): cross-entropy on the noisy pool, then
    ``T = self.estimate(model)`` once, then :meth:`corrected_step` (see the module docstring for the two
    protocols, ``two_stage`` true and false).

    Subclasses set :attr:`select_on_val` (the estimating network is the stage-1 epoch with the lowest
    :func:`keras_crossentropy` on the noisy validation split) and may set ``keep_optimizer_state``.
    """

    #: two-stage protocol: pick the estimating network by its noisy-validation loss (else its last epoch)
    select_on_val: ClassVar[bool] = False

    def __init__(self, *, two_stage: bool = True, warmup: int | None = None, reinit: bool = False):
        super().__init__()
        self.two_stage, self.warmup, self.reinit = bool(two_stage), warmup, bool(reinit)
        if self.two_stage and (warmup is not None or self.reinit):
            raise NLBenchError(f"method {getattr(self, 'name', type(self).__name__)!r}: warmup and reinit are "
                               "options of the one-network variant; add two_stage=false to use them")
        #: the estimated transition matrix ``(C, C)``; None until it is estimated
        self.T: torch.Tensor | None = None

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.T = None
        #: the epoch whose network estimated T (two-stage: the selected stage-1 epoch)
        self.estimator_epoch: int | None = None
        if self.two_stage:
            self.warmup_epochs = ctx.epochs  # stage 1: cross-entropy for the run's epochs
            self._init_state = _copy_state(ctx.model)
            self._best_state: dict[str, torch.Tensor] | None = None
            self._best_loss = math.inf
            self._best_epoch: int | None = None
        else:
            self.warmup_epochs = resolve_warmup(self.warmup, ctx.epochs)
            self._init_state = (_copy_state(ctx.model) if self.reinit and self.warmup_epochs > 0 else None)

    def stages(self) -> int:
        return 2 if self.two_stage else 1

    def estimate(self, model: nn.Module) -> torch.Tensor:
        raise NotImplementedError

    def _validates(self) -> bool:
        return self.select_on_val and self.ctx.val_y is not None and len(self.ctx.val_y) > 0

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if not self.two_stage:
            if epoch == self.warmup_epochs:
                self.T = self.estimate(model).detach()
                self.estimator_epoch = epoch
            return
        if epoch <= self.ctx.epochs and self._validates():
            # Keras' ModelCheckpoint(save_best_only=True) on val_loss: np.less, so the first of equal losses
            # wins and a NaN loss never does
            loss = keras_crossentropy(self.ctx.predict(model, self.ctx.val_x), self.ctx.val_y)
            if loss < self._best_loss:
                self._best_loss, self._best_epoch, self._best_state = loss, epoch, _copy_state(model)

    def on_stage_start(self, stage: int, model: nn.Module) -> None:
        if not self.two_stage or stage != 2:
            return
        if self._best_state is not None:  # the selected stage-1 network (else the last epoch's, the model as is)
            model.load_state_dict(self._best_state)
        self.estimator_epoch = self._best_epoch if self._best_state is not None else self.ctx.epochs
        self.T = self.estimate(model).detach()
        model.load_state_dict(self._init_state)  # stage 2 trains the initial network again
        self._best_state = self._init_state = None  # no longer needed (nor checkpointed)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        # one-network variant with reinit: at the start of the first corrected epoch, not right after the
        # estimate, so that the record of the last warm-up epoch evaluates the warmed-up network
        if not self.two_stage and self._init_state is not None and epoch == self.warmup_epochs + 1:
            model.load_state_dict(self._init_state)
            self._init_state = None

    def epoch_log(self) -> dict[str, float]:
        # stage-2 entries say which stage-1 epoch estimated T (the one-network variant's history is unchanged)
        return {"estimator_epoch": self.estimator_epoch} if self.two_stage and self.T is not None else {}

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        if self.T is None:
            return StepOutput(F.cross_entropy(model(batch.x).float(), batch.y))
        return self.corrected_step(batch, model)

    def corrected_step(self, batch: Batch, model: nn.Module) -> StepOutput:
        return StepOutput(forward_corrected_loss(model(batch.x), batch.y, self.T))

    def options(self) -> dict[str, Any]:
        return {"two_stage": self.two_stage, "warmup": self.warmup, "reinit": self.reinit}
