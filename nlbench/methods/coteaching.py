"""Co-teaching (Han, Yao, Yu, Niu, Xu, Hu, Tsang and Sugiyama, "Co-teaching: robust training of deep neural
networks with extremely noisy labels", NeurIPS 2018), and ``coteaching-meta``, nlbench's variant that estimates
the forget rate from the clean meta set instead of reading the nominal noise rate.

Official code: github.com/bhanML/Co-teaching, ``main.py`` (the schedule) and ``loss.py`` (``loss_coteaching``).
Two networks are trained side by side on the same batches. On every batch each network ranks the samples by its
own cross-entropy and keeps the ``int((1 - r) * B)`` with the smallest loss; each network is then updated on the
samples its PEER kept (the cross update). The method returns the sum of the two mean losses, so the harness's one
optimiser, which holds both networks' parameters, updates both (the two networks share no parameter, so each
gets the gradient of its own loss).

The forget rate ``r`` of epoch ``e`` (nlbench counts trained epochs from 1) is the official ``rate_schedule[e]``:
``main.py`` builds ``rate_schedule = ones(n_epoch) * tau`` and sets ``rate_schedule[:Tk] = linspace(0,
tau ** c, Tk)``; its epoch 0 only evaluates the random networks, and it trains epochs ``1 .. n_epoch - 1`` (199
of its 200) with ``rate_schedule[epoch]``. So the first trained epoch already forgets ``tau / (Tk - 1)``, and
``tau`` is reached at epoch ``Tk - 1`` (9 with the paper's ``Tk = 10``)::

    r(e) = tau ** c * e / (Tk - 1)   for 1 <= e < Tk - 1,   tau ** c at e = Tk - 1,   tau for e >= Tk.

``Tk <= 2`` leaves no ramp: ``linspace(0, tau, 1) = [0]`` and ``linspace(0, tau, 2) = [0, tau]`` put ``0`` only on
the untrained epoch 0, so every trained epoch forgets ``tau``. The exponent ``c`` (``--exponent``, default 1)
only changes the end point of the linear ramp to ``tau ** c`` (the code's help calls it the ``c`` of the paper's
``T^c``, but the code does not raise ``T`` to ``c``); with ``c != 1`` the rate jumps from ``tau ** c`` to
``tau`` at epoch ``Tk``. nlbench computes the entries as numpy's ``linspace`` does (``e * (stop / (Tk - 1))``,
the last entry exactly ``stop``), so they are bit-equal to the official ones.

Defaults: ``tau`` is the noise rate, assumed known (``main.py``: ``forget_rate = noise_rate`` unless
``--forget_rate``; ``forget_rate=None`` reads the run's nominal rate, so ``coteaching`` declares
``uses_noise_rate`` and is flagged, never ranked with plain methods); ``c = 1``; ``Tk`` is the paper's share of
the run, :data:`TK_SHARE` = 10 of 200 epochs (Section 4; ``main.py``: ``--num_gradual 10``, ``n_epoch = 200``
for every dataset), rounded up: ``Tk = ceil(epochs * 10 / 200)``, the smallest whole ``Tk`` whose share of the
run is at least the paper's (200 epochs: 10, 120: 6, 30: 2 (1.5 rounded up), 20: 1, 3: 1). At the memorisation
protocol's 30 epochs and the short protocol's 3, ``Tk`` is 2 resp. 1, so ``tau`` is forgotten from the first
epoch on, as the official code does with these ``Tk``. An explicit ``tk`` is used as given (one larger than
``epochs + 1`` never reaches ``tau``; the official code refuses ``Tk > n_epoch``).

Differences from the official code, all in the harness's protocol or in guards:

- the loss: ``loss_coteaching`` returns ``torch.sum(F.cross_entropy(logits[kept], y[kept])) / num_remember``,
  i.e. the MEAN over the kept samples divided once more by ``num_remember``; under the official Adam a constant
  factor on the loss leaves the steps (nearly) unchanged, under the harness's SGD it would divide the learning
  rate by ``num_remember`` (12 to 64 here), so nlbench uses the plain mean, what Adam effectively follows;
- the optimiser: the official code uses Adam, lr 0.001, betas (0.9, 0.999), batch 128, 200 epochs, and from
  epoch 80 the lr decays linearly to 0 while beta1 drops to 0.1 (``adjust_learning_rate``); nlbench runs both
  networks with the run's optimiser and schedule (SGD with momentum), like every method. The harness also keeps
  the last partial batch (the official loader drops it) and does not cap the steps per epoch (the official
  ``num_iter_per_epoch = 400``, which cuts MNIST's 468 batches);
- ``num_remember`` is at least 1 (the official code divides by 0 and gets NaN when ``(1 - r) * B < 1``, which
  only a tiny last batch can reach here); ties in the loss are broken by batch order (stable sort; the official
  ``np.argsort`` is not stable, ties have probability 0 with float losses);
- evaluation: network 1 (the harness's ``model``); the official code reports both networks. The second one
  (``ctx.new_model(1)``, stream 1 of the run's seed) is trained but not evaluated. The official code also logs
  the "pure ratio" (the clean share of the kept samples) from the true labels; a method never reads them.

The forget rate of every epoch is in the record's history (``forget_rate``, via :meth:`Method.epoch_log`).

Sym80 on the memorisation protocol ends near chance with either schedule: at ``r = 0.8`` a batch keeps 20%, as
many as there are clean labels, and the selection feeds a class-prior loop between the two networks
(docs/methods.md, "coteaching on sym80", explains it from one-seed probes).

``coteaching-meta`` (nlbench's variant, not in the paper) reads the clean meta set instead of the nominal rate.
It trains epoch 1 with ``r = 0`` (it has no estimate yet) and from epoch 2 on follows the official schedule above
with the estimated ``tau``: epoch ``e >= 2`` forgets ``rate_schedule[e]``, the same entry ``coteaching`` uses,
so only epoch 1 differs (with ``Tk <= 2``: ``0`` instead of ``tau``; with ``Tk = 10``: ``0`` instead of
``tau / 9``). At the end of epoch 1, in which both networks have been trained with plain cross-entropy on the
noisy labels, let ``f`` be their averaged softmax's argmax (eval mode, no gradients), ``a`` its accuracy on the
clean meta set and ``b`` its agreement with the noisy labels of the pool. If ``f(x)`` depends on the true class
only (not on whether the label was flipped) and the noise is symmetric, a flipped label is one of the ``C - 1``
other classes at random, so ``b = a (1 - rho) + (1 - a) rho / (C - 1)`` and

    ``rho_hat = (a - b) / (a - (1 - a) / (C - 1))``, clipped to ``[0, 1 - 1/C]``

(0 when ``a <= 1/C``: a network no better than chance tells nothing, so nothing is forgotten). Under
class-dependent noise a network that has partly learned the flips predicts the noisy class more often than
chance, so ``b`` is larger and the rate is underestimated (the synthetic mixture, 4 classes, 2000 samples,
seed 0: sym20 read as 0.20, sym40 as 0.36, pairflip45 as 0.26; Fashion-MNIST in docs/methods.md). The
estimate is not re-estimated later, since networks trained on small-loss samples no longer fit the noisy
labels. A 1-epoch run never uses it.

GLC's estimator (``1 - mean_i C_hat[i, i]``, see ``glc``) is not used: ``C_hat``'s diagonal holds the network's
own confusion as well as the noise, and on Fashion-MNIST after one epoch it overstated every rate (sym20 read as
0.36 to 0.53, pairflip45 as 0.54 to 0.67, in the grid records made with it up to commit 557d690).
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from nlbench.errors import NLBenchError
from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Range

__all__ = ["TK_SHARE", "CoTeaching", "CoTeachingMeta", "coteaching_select", "forget_rate_at", "kept_count",
           "agreement_noise_rate", "resolve_tk"]

#: The ramp length ``Tk`` as a share of the run: 10 of 200 epochs (Han et al. 2018, Section 4: ``Tk = 10``,
#: 200 epochs; bhanML/Co-teaching main.py: ``--num_gradual`` default 10, ``n_epoch = 200`` for every dataset).
TK_SHARE = Fraction(10, 200)


def resolve_tk(tk: int | None, epochs: int) -> int:
    """The ramp length in epochs: ``ceil(epochs * TK_SHARE)`` (at least 1) by default, an explicit ``tk`` as
    given."""
    if tk is None:
        return max(1, ceil(epochs * TK_SHARE))
    return int(tk)


def forget_rate_at(epoch: int, forget_rate: float, tk: int, exponent: float = 1.0) -> float:
    """The official ``rate_schedule[epoch]`` (bhanML/Co-teaching main.py): ``linspace(0, forget_rate **
    exponent, tk)[epoch]`` for ``epoch < tk``, ``forget_rate`` from ``tk`` on. ``epoch`` is nlbench's 1-based
    epoch, which is the official loop's index (its epoch 0 trains nothing)."""
    if epoch >= tk:
        return float(forget_rate)
    if epoch <= 0:
        return 0.0
    stop = float(forget_rate) ** exponent  # here 1 <= epoch <= tk - 1, so tk >= 2
    return stop if epoch == tk - 1 else epoch * (stop / (tk - 1))  # numpy's linspace, last entry exact


def kept_count(batch_size: int, forget_rate: float) -> int:
    """How many small-loss samples of a batch are kept: the official ``int((1 - forget_rate) * batch_size)``
    (bhanML/Co-teaching loss.py), at least 1."""
    return max(1, min(batch_size, int((1.0 - forget_rate) * batch_size)))


def coteaching_select(loss1: torch.Tensor, loss2: torch.Tensor,
                      forget_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross selection: ``(idx_for_1, idx_for_2)``, batch positions network 1 resp. 2 trains on.

    ``idx_for_2`` are the ``kept_count`` samples with the smallest ``loss1`` (network 1's choice, passed to
    network 2) and ``idx_for_1`` those with the smallest ``loss2``, each in ascending order of the loss (ties in
    batch order).
    """
    k = kept_count(len(loss1), forget_rate)
    chosen_by_1 = torch.argsort(loss1.detach(), stable=True)[:k]
    chosen_by_2 = torch.argsort(loss2.detach(), stable=True)[:k]
    return chosen_by_2, chosen_by_1


def agreement_noise_rate(pool_pred: torch.Tensor, pool_labels: torch.Tensor, meta_pred: torch.Tensor,
                         meta_labels: torch.Tensor, num_classes: int) -> float:
    """The symmetric-noise moment estimate ``(a - b) / (a - (1 - a) / (C - 1))`` clipped to ``[0, 1 - 1/C]``:
    ``a`` is the accuracy of the predicted classes ``meta_pred`` on the clean ``meta_labels``, ``b`` the agreement
    of ``pool_pred`` with the noisy ``pool_labels``, ``C = num_classes``; 0 when ``a <= 1/C``."""
    if pool_pred.shape != pool_labels.shape or meta_pred.shape != meta_labels.shape or pool_pred.ndim != 1 \
            or meta_pred.ndim != 1 or len(pool_pred) == 0 or len(meta_pred) == 0 or num_classes < 2:
        raise ValueError(f"agreement_noise_rate needs non-empty 1-d predictions and labels of equal shapes and "
                         f"at least 2 classes, got {tuple(pool_pred.shape)}, {tuple(pool_labels.shape)}, "
                         f"{tuple(meta_pred.shape)}, {tuple(meta_labels.shape)} and {num_classes} classes")
    a = (meta_pred == meta_labels).double().mean().item()
    b = (pool_pred == pool_labels).double().mean().item()
    chance_gap = a - (1.0 - a) / (num_classes - 1)
    if chance_gap <= 0:
        return 0.0
    return min(max((a - b) / chance_gap, 0.0), 1.0 - 1.0 / num_classes)


@register_method("coteaching")
class CoTeaching(Method):
    """Co-teaching: two networks each pick their small-loss samples of the batch and the peer trains on them.

    The forgotten fraction follows the official schedule (bhanML/Co-teaching main.py's ``rate_schedule``): a
    linear ramp to the forget rate reached at epoch ``tk - 1``, ``tk`` the paper's 10 of 200 epochs scaled to the
    run; the default forget rate is the run's nominal noise rate (flagged as using it). Network 1 is evaluated.

    Options: ``forget_rate`` (None: the nominal noise rate), ``tk`` (ramp length in epochs, the official
    ``--num_gradual``; None: ``ceil(epochs * 10 / 200)``) and ``exponent`` (the official ``--exponent``: the ramp
    ends at ``forget_rate ** exponent``).
    """

    uses_noise_rate = True
    #: 2: the official schedule (rate_schedule[epoch], Tk scaled by TK_SHARE) and int() kept count; both
    #: variants (coteaching-meta inherits it)
    version = 2

    def __init__(self, *, forget_rate: Annotated[float, Range(0, 1, high_open=True)] | None = None,
                 tk: Annotated[int, Range(1, 100_000)] | None = None,
                 exponent: Annotated[float, Range(0, 10, low_open=True)] = 1.0):
        super().__init__()
        self.forget_rate, self.tk, self.exponent = forget_rate, tk, exponent
        #: the resolved forget rate tau and ramp length (set in setup)
        self.tau: float | None = None
        self.tk_epochs: int | None = None
        #: the forget rate of the current epoch (set in on_epoch_start, logged by epoch_log)
        self.epoch_forget_rate = 0.0

    def initial_forget_rate(self, ctx: MethodContext) -> float | None:
        if self.forget_rate is not None:
            return float(self.forget_rate)
        if ctx.noise_rate is None:
            raise NLBenchError(f"method {self.name!r} needs the nominal noise rate, or set forget_rate")
        return float(ctx.noise_rate)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        self.tau = self.initial_forget_rate(ctx)
        self.tk_epochs = resolve_tk(self.tk, ctx.epochs)
        self.net2 = ctx.new_model(1)

    def networks(self) -> list[nn.Module]:
        return [self.net2]

    def current_forget_rate(self, epoch: int) -> float:
        """The forget rate of (1-based) epoch ``epoch``: the official ``rate_schedule[epoch]``; 0 without a
        forget rate (``coteaching-meta`` before its estimate)."""
        return 0.0 if self.tau is None else forget_rate_at(epoch, self.tau, self.tk_epochs, self.exponent)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch_forget_rate = self.current_forget_rate(epoch)

    def epoch_log(self) -> dict[str, float]:
        return {"forget_rate": self.epoch_forget_rate}

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        logits1, logits2 = model(batch.x).float(), self.net2(batch.x).float()
        loss1 = F.cross_entropy(logits1, batch.y, reduction="none")
        loss2 = F.cross_entropy(logits2, batch.y, reduction="none")
        for_1, for_2 = coteaching_select(loss1, loss2, self.current_forget_rate(batch.epoch))
        return StepOutput(loss1[for_1].mean() + loss2[for_2].mean())

    def options(self) -> dict[str, Any]:
        return {"forget_rate": self.forget_rate, "tk": self.tk, "exponent": self.exponent,
                "forget_rate_used": self.tau, "tk_used": self.tk_epochs}


@register_method("coteaching-meta")
class CoTeachingMeta(CoTeaching):
    """Co-teaching whose forget rate is estimated after the first epoch from the clean meta set (nlbench's variant).

    The estimate solves ``b = a (1 - rho) + (1 - a) rho / (C - 1)``, where ``a`` is the two networks' accuracy on
    the meta set and ``b`` their agreement with the pool's noisy labels (exact for symmetric noise, low for
    class-dependent noise); it needs no nominal noise rate. Epoch 1 forgets nothing while it estimates; from
    epoch 2 on the official schedule's entries with the estimate. Network 1 is evaluated.

    Options: ``tk`` and ``exponent``, as for ``coteaching``.
    """

    uses_noise_rate = False
    uses_meta = True

    def __init__(self, *, tk: Annotated[int, Range(1, 100_000)] | None = None,
                 exponent: Annotated[float, Range(0, 10, low_open=True)] = 1.0):
        super().__init__(tk=tk, exponent=exponent)

    def initial_forget_rate(self, ctx: MethodContext) -> float | None:
        return None  # estimated at the end of epoch 1

    def current_forget_rate(self, epoch: int) -> float:
        """0 in epoch 1 (no estimate yet), then the official ``rate_schedule[epoch]`` with the estimate."""
        return 0.0 if epoch <= 1 else super().current_forget_rate(epoch)

    def predicted_classes(self, model: nn.Module, *, meta: bool) -> torch.Tensor:
        """Argmax of the two networks' averaged softmax, on the meta set or (``meta=False``) on the pool."""
        predict = self.ctx.predict_meta if meta else self.ctx.predict
        return (predict(model).softmax(dim=1) + predict(self.net2).softmax(dim=1)).argmax(dim=1)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if epoch == 1:
            self.tau = agreement_noise_rate(self.predicted_classes(model, meta=False), self.ctx.train_y,
                                            self.predicted_classes(model, meta=True), self.ctx.meta_y,
                                            self.ctx.num_classes)

    def options(self) -> dict[str, Any]:
        return {"tk": self.tk, "exponent": self.exponent, "forget_rate_used": self.tau, "tk_used": self.tk_epochs}
