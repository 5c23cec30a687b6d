"""The paper's lightweight surrogate of meta-reweighting (FBR, feature-based reweighting) and its ablations.

:func:`surrogate_scores` is the pure scoring function (usable from any training loop); :class:`Surrogate` is the
method that turns the scores into persistent per-sample weights inside the harness. The reading of the paper
follows ``docs/methods.md``, section "FBR surrogate".
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Choice, Range

_MODES = ("persistent", "direct")
_SCALES = ("ema", "meta")
_META_BN = ("train", "eval")
#: Rows per chunk when the whole meta set is re-encoded (bounds activation memory of big backbones).
_ENCODE_CHUNK = 500


def surrogate_scores(feats: torch.Tensor, labels: torch.Tensor, meta_feats: torch.Tensor, meta_labels: torch.Tensor,
                     num_classes: int, *, center: bool = True, row_shift: bool = True,
                     signed: bool = True) -> torch.Tensor:
    """FBR scores ``r`` (shape ``(B,)``) of training samples against clean meta samples.

    ``feats`` ``(B, d)`` are penultimate features of the batch, ``labels`` ``(B,)`` its (noisy) labels,
    ``meta_feats`` ``(m', d)`` and ``meta_labels`` ``(m',)`` the clean meta samples, with labels in
    ``[0, num_classes)``. With ``G`` the meta features and ``C = num_classes``:

    1. centre: ``mu = mean of the rows of G`` (``center=False``: ``mu = 0``); ``F^ = F - mu``, ``G^ = G - mu``;
    2. similarity ``S = F^ G^T`` ``(B, m')``;
    3. row shift: class-mean similarities ``cbar[i, k] = mean_{j: y_j = k} S[i, j]`` (one one-hot matmul),
       ``s2[i]`` = the second largest of ``cbar[i, :]``, ``S' = max(S - s2, 0)`` (``row_shift=False``:
       ``S' = S``);
    4. label-signed mask ``M[i, j] = 1`` if ``labels[i] == meta_labels[j]`` else ``-1/(C-1)``
       (``signed=False``: ``0``);
    5. ``r[i] = (1/m') sum_j M[i, j] S'[i, j]``, computed as one more one-hot matmul, never as a ``(B, m')`` mask.

    Classes absent from the meta samples have no class mean; their ``cbar`` is ``-inf``, so they are never the
    runner-up (a silent 0 would be picked as "second largest" whenever all present class means are negative).
    With fewer than two classes present there is no runner-up at all and the shift is skipped for every row
    (``S' = S``). The computation runs outside autocast in the inputs' precision (float64 stays float64; bf16 and
    fp16 are upcast to float32), whatever torch's default dtype, and is invariant to adding one vector to all
    features (with ``center=True``) and covariant with scale (``r(aF, aG) = a^2 r(F, G)``). Gradients flow if
    the inputs require them; the method passes detached features.
    """
    if num_classes < 2:
        raise ValueError(f"surrogate_scores needs num_classes >= 2, got {num_classes}")
    if feats.ndim != 2 or meta_feats.ndim != 2 or feats.shape[1] != meta_feats.shape[1]:
        raise ValueError(f"feats (B, d) and meta_feats (m', d) must share d, got {tuple(feats.shape)} and "
                         f"{tuple(meta_feats.shape)}")
    m = meta_feats.shape[0]
    if m == 0:
        raise ValueError("surrogate_scores needs at least one meta sample")
    # float64 in, float64 out; half precisions are upcast to float32. Every constant is made in that dtype, so
    # the result never depends on torch's default dtype.
    dtype = torch.promote_types(feats.dtype, meta_feats.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    with torch.autocast(feats.device.type, enabled=False):
        f, g = feats.to(dtype), meta_feats.to(dtype)
        if center:
            mu = g.mean(0, keepdim=True)
            f, g = f - mu, g - mu
        s = f @ g.T
        onehot = F.one_hot(meta_labels.long(), num_classes).to(dtype)  # (m', C)
        if row_shift:
            counts = onehot.sum(0)
            cbar = (s @ onehot) / counts.clamp_min(1)
            cbar = cbar.masked_fill(counts == 0, float("-inf"))
            s2 = cbar.topk(2, dim=1).values[:, 1:]  # (B, 1); -inf when fewer than two classes are present
            # Per-row shift and floor instead of a Python branch (no host sync on CUDA) and instead of a where()
            # over the (B, m') matrix: rows without a runner-up get shift 0 and floor -inf, i.e. S' = S.
            finite = torch.isfinite(s2)
            zero, neg_inf = s2.new_zeros(()), s2.new_full((), float("-inf"))
            s = torch.maximum(s - torch.where(finite, s2, zero), torch.where(finite, zero, neg_inf))
        lam_neg = 1.0 / (num_classes - 1) if signed else 0.0
        # sum_j M_ij S'_ij = (1 + lam_neg) * (same-class sum) - lam_neg * (row sum)
        same = (s @ onehot).gather(1, labels.long().view(-1, 1)).squeeze(1)
        return ((1.0 + lam_neg) * same - lam_neg * s.sum(1)) / m


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
            for b in mod.buffers()]


@torch.no_grad()
def encode_meta(model: nn.Module, x: torch.Tensor, *, bn: str = "train") -> torch.Tensor:
    """Penultimate features of ``x`` without gradients, leaving every BatchNorm running statistic untouched.

    ``bn="train"`` normalises with the statistics of the encoded chunk (the same regime as the training batch's
    features, which come from a train-mode forward) and restores the running buffers afterwards; ``bn="eval"``
    uses the running statistics. The model's train/eval mode is restored either way.
    """
    was_training = model.training
    saved = [b.clone() for b in _bn_buffers(model)] if bn == "train" else []
    model.train(bn == "train")
    try:
        return torch.cat([model.features(x[i:i + _ENCODE_CHUNK]) for i in range(0, len(x), _ENCODE_CHUNK)])
    finally:
        for buf, old in zip(_bn_buffers(model), saved, strict=False):
            buf.copy_(old)
        model.train(was_training)


@register_method("surrogate", aliases=("fbr",))
class Surrogate(Method):
    """FBR: reweight each training sample by the label-signed, centred, row-shifted similarity of its
    penultimate features to the clean meta set (:func:`surrogate_scores`), with no bi-level optimisation.

    Per step: ONE train-mode forward of the batch through ``model.features``; ``logits = model.head(feats)``;
    scores ``r`` from ``feats.detach()`` against the meta features; then

    - ``mode="persistent"``: ``w[I] <- clip(w[I] + alpha * r[I] / s, 0, 1)`` (the paper's persistent clipped
      update; ``w`` starts at ``w0`` for every sample);
    - ``mode="direct"``: ``w[I] = clip(r[I] / s, 0, 1)`` per step (``alpha`` and ``w0`` unused except that
      ``w0`` is what :meth:`sample_weights` reports for samples not yet seen).

    The loss is ``sum_i w_i l_i / B`` with the updated weights: the batch size, not ``sum_i w_i``, normalises,
    as in ``meta-reweight``, so down-weighting shrinks the effective step instead of re-inflating the few
    surviving samples (and a batch whose weights are all 0 contributes nothing rather than dividing by 0).

    Scale ``s`` (nlbench defines it; both make ``r / s`` dimensionless, so the step size does not depend on
    the feature norm, which ``r`` carries squared):

    - ``scale="ema"``: a bias-corrected exponential moving average (decay 0.9, current batch included) of the
      batch mean of ``|r|``; ``alpha`` is then the typical weight change per visit;
    - ``scale="meta"``: the mean squared norm of the (centred) meta features in use, divided by ``C``: only the
      about ``m'/C`` same-class meta samples carry the positive part of the average in step 5, so this keeps
      ``r / s`` of order 0.1-1 (the measurement is in docs/methods.md, "Measurements behind the defaults").

    Meta features: computed without gradients by :func:`encode_meta`, never changing BatchNorm running
    statistics. ``meta_bn="train"`` (default) normalises the meta chunk with its own batch statistics, the
    regime the training batch's features come from, and restores the buffers; ``meta_bn="eval"`` uses the
    running statistics.
    ``refresh="batch"``: a fresh random meta batch of ``meta_batch`` samples every step (drawn with the method's
    generator); ``refresh=k``: the whole meta set is re-encoded every ``k`` steps and cached (the cost of
    ``m / B`` forwards paid on steps 0, k, 2k, ..., so time steady-state steps after a warm-up).

    Defaults (``persistent``, ``alpha=0.3``, ``w0=1``, ``scale="ema"``, ``refresh=50``, ``meta_bn="train"``) won
    a sweep on noisy validation (``benchmarks/sweep_surrogate.py``); the memorisation preset sets ``alpha=3``,
    which won its own sweep (``benchmarks/sweep_memorize.py``). ``w0=1`` because a class the features do not
    separate yet scores ``r ~ 0``, and a rule that starts low starves it. The sweeps' tables and the step costs
    are in docs/methods.md, "Measurements behind the defaults".
    The ablations ``surrogate-no-center``, ``surrogate-no-shift`` and ``surrogate-no-sign`` are subclasses
    that switch one class flag off.
    """

    reweights = True
    uses_meta = True
    center: bool = True
    row_shift: bool = True
    signed: bool = True

    def __init__(self, *, mode: Annotated[str, Choice(*_MODES)] = "persistent",
                 alpha: Annotated[float, Range(0, 1e6, low_open=True)] = 0.3,
                 w0: Annotated[float, Range(0, 1)] = 1.0, scale: Annotated[str, Choice(*_SCALES)] = "ema",
                 refresh: Annotated[int, Range(1, 10**9)] | Annotated[str, Choice("batch")] = 50,
                 meta_batch: Annotated[int, Range(1, 1_000_000)] = 100,
                 meta_bn: Annotated[str, Choice(*_META_BN)] = "train"):
        super().__init__()
        self.mode, self.alpha, self.w0, self.scale = mode, float(alpha), float(w0), scale
        self.refresh, self.meta_batch, self.meta_bn = refresh, meta_batch, meta_bn

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.w = torch.full((ctx.num_train,), self.w0, device=ctx.device)
        self._abs_ema = torch.zeros((), device=ctx.device)
        self._ema_steps = 0
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self._since_refresh = 0

    def _meta(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.ctx
        if self.refresh == "batch":
            k = min(self.meta_batch, len(ctx.meta_y))
            j = torch.randperm(len(ctx.meta_y), device=ctx.device, generator=ctx.generator)[:k]
            return encode_meta(model, ctx.meta_x[j], bn=self.meta_bn), ctx.meta_y[j]
        if self._cache is None or self._since_refresh >= self.refresh:
            self._cache = (encode_meta(model, ctx.meta_x, bn=self.meta_bn), ctx.meta_y)
            self._since_refresh = 0
        self._since_refresh += 1
        return self._cache

    def _scale(self, r: torch.Tensor, meta_feats: torch.Tensor) -> torch.Tensor:
        if self.scale == "meta":
            g = meta_feats.float()
            if self.center:
                g = g - g.mean(0, keepdim=True)
            s = g.pow(2).sum(1).mean() / self.ctx.num_classes
        else:
            self._ema_steps += 1
            self._abs_ema = 0.9 * self._abs_ema + 0.1 * r.abs().mean()
            s = self._abs_ema / (1 - 0.9 ** self._ema_steps)
        return s.clamp_min(1e-12)  # all-zero features (dead ReLUs) give r = 0: weights stay put, no NaN

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        meta_feats, meta_y = self._meta(model)
        feats = model.features(batch.x)
        losses = F.cross_entropy(model.head(feats), batch.y, reduction="none")
        r = surrogate_scores(feats.detach(), batch.y, meta_feats, meta_y, self.ctx.num_classes,
                             center=self.center, row_shift=self.row_shift, signed=self.signed)
        step = r / self._scale(r, meta_feats)
        w = step if self.mode == "direct" else self.w[batch.idx] + self.alpha * step
        w = w.clamp(0, 1)
        self.w[batch.idx] = w
        return StepOutput((w * losses.float()).sum() / len(losses), w)

    def sample_weights(self) -> torch.Tensor:
        """The persistent weights (``direct`` mode: each sample's latest weight, ``w0`` if not yet seen)."""
        return self.w

    def options(self) -> dict[str, Any]:
        return {"mode": self.mode, "alpha": self.alpha, "w0": self.w0, "scale": self.scale,
                "refresh": self.refresh, "meta_batch": self.meta_batch, "meta_bn": self.meta_bn,
                "center": self.center, "row_shift": self.row_shift, "signed": self.signed}


@register_method("surrogate-no-center")
class SurrogateNoCenter(Surrogate):
    """Ablation of ``surrogate``: no mean-centring (``mu = 0``)."""

    center = False


@register_method("surrogate-no-shift")
class SurrogateNoShift(Surrogate):
    """Ablation of ``surrogate``: no row shift (``S' = S``)."""

    row_shift = False


@register_method("surrogate-no-sign")
class SurrogateNoSign(Surrogate):
    """Ablation of ``surrogate``: no negative label sign (``lambda- = 0``)."""

    signed = False
