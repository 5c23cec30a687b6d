"""DivideMix (Li, Socher and Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020).

Two networks are trained side by side. After a warm-up of plain cross-entropy on the noisy pool, at the start of
every epoch each network's per-sample cross-entropy over the whole pool (eval mode) is min-max normalised and a
two-component 1-D Gaussian mixture is fitted to it; the posterior of the component with the smaller mean is the
sample's clean probability ``w``. Each network then trains on the division made by its PEER's mixture
(co-divide): samples with ``w > p_threshold`` are labelled, the others unlabelled, and the network trains with
MixMatch as modified by the paper (Section 3.2, Algorithm 1):

- label co-refinement of a labelled sample: ``sharpen(w * onehot(y) + (1 - w) * p_own, T)``, with ``p_own`` the
  network's mean prediction over the K = 2 views of the sample;
- label co-guessing of an unlabelled sample: ``sharpen((p_net1 + p_net2) / 2, T)``, the mean of both networks'
  predictions over both views; ``sharpen(p, T) = p^(1/T) / sum(p^(1/T))``;
- MixUp of all views with a random permutation of them: ``lambda ~ Beta(alpha, alpha)``,
  ``lambda' = max(lambda, 1 - lambda)``, ``x' = lambda' x_a + (1 - lambda') x_b`` (same for the targets), so
  a mixed row stays closer to its own sample, whose origin (labelled or not) decides its loss term;
- ``loss = Lx + lambda_u(t) * Lu + lambda_r * Lreg``: ``Lx`` cross-entropy with the mixed soft targets over the
  labelled-origin rows, ``Lu`` the mean squared error between softmax and mixed target over the unlabelled-origin
  rows (averaged over rows and classes, as in the official code), ``Lreg = sum_c pi_c log(pi_c / mean_rows p_c)``
  with the uniform prior ``pi``, over all mixed rows.

The evaluated model is the ensemble of both networks: the log of the mean of their softmax predictions (the
paper's "average predictions of both networks" at test time; the official code adds the logits instead).

Defaults (paper, Section 4.1 and Appendix B, Table 7, CIFAR): ``T = 0.5``, ``alpha = 4``, ``p_threshold = 0.5``
(0.6 for 90% noise), ``lambda_r = 1``, ``lambda_u = 25``. The paper picks ``lambda_u`` from {0, 25, 50, 150} per
setting (Table 7): CIFAR-10 symmetric 20% -> 0, 50% -> 25, 80% -> 25, 90% -> 50, asymmetric 40% -> 0; CIFAR-100
symmetric 20% -> 25, 50%, 80% and 90% -> 150. nlbench's default is 25 for every setting (the official script's
default), since choosing it per setting reads the noise rate. Warm-up: 10 of 300 epochs for CIFAR-10, 30 for
CIFAR-100; ``lambda_u`` ramps up linearly over 16 epochs after the warm-up (official ``linear_rampup``). The GMM
uses the official settings (scikit-learn's ``GaussianMixture(max_iter=10, tol=1e-2, reg_covar=5e-4)``). The
official code adds a confidence penalty (the negative entropy ``mean sum_c p_c log p_c``) to the warm-up loss for
asymmetric noise: option ``penalty`` (default off, as for symmetric noise).

nlbench's choices and deviations:

- one training loop (the harness's): the official code trains network 1 for an epoch on network 2's division,
  then network 2 on network 1's; here every step trains both networks, each on the batch's co-divided parts from
  its peer's mixture, and returns ``loss_net1 + loss_net2`` (the run's one SGD optimiser holds both networks).
  The labelled and unlabelled parts of a batch are its samples above and below the threshold (the official code
  draws separate labelled and unlabelled batches, so an epoch covers the labelled set once and re-samples the
  unlabelled one); here an epoch covers the whole pool once per network. The mixed batch is the two views of
  all B samples (2B rows per network per step; the official code mixes 2B labelled + 2B unlabelled rows). A
  batch with no labelled (unlabelled) sample drops ``Lx`` (``Lu``); the terms are masked sums, without a host
  sync. The peer's predictions for co-guessing come from the same no-grad forward pass (in the harness's train
  mode) as the network's own; the official code runs the peer in eval mode.
- warm-up (option ``warmup``, in epochs; None: ``min(10, max(1, epochs // 10))``): the paper's 10 for runs of
  100 epochs or more, 3 for the 30-epoch memorisation protocol, 1 for the 3-epoch short protocol and a 2-epoch
  run. An explicit value is clipped to ``max(1, epochs - 1)`` so that at least one MixMatch epoch runs (a
  1-epoch run is all warm-up).
- ramp-up of ``lambda_u`` (option ``rampup``, in epochs; None: ``min(16, max(1, (epochs - warmup) // 2))``, the
  paper's 16 when the run is long enough, else half of the MixMatch phase: 13 for the memorisation protocol, 1
  for short runs); an explicit value is clipped to ``max(1, epochs - warmup)``. ``lambda_u(t) = lambda_u *
  clip((t - warmup) / rampup, 0, 1)`` with ``t = step / steps_per_epoch`` the fractional 0-based epoch, the
  official ``current = epoch + batch_idx / num_iter``.
- augmentation (option ``views``): ``"same"`` (default) uses the harness's batch (augmented by the harness iff
  the run has ``--augment``) for both K = 2 views, so the views are identical and each network's predictions
  are computed once; the two copies still get different MixUp partners. ``"crop-flip"`` (image inputs only)
  makes each view a fresh random crop (4-pixel zero padding of the RAW image, as the official transform pads
  before normalising) and horizontal flip of the raw training inputs, drawn from the method's generator, for
  labelled and unlabelled samples alike (the official code augments both); it ignores the harness's own
  augmentation of the batch. Fashion-MNIST's memorisation protocol has no augmentation, so the default keeps
  DivideMix on the same inputs as every other method.
- the GMM is a small deterministic EM in float64 (no scikit-learn, no RNG): the initial responsibilities are the
  hard split of the normalised losses at 0.5, i.e. the first k-means step from centres at the minimum and the
  maximum (scikit-learn's default initialises with randomly seeded k-means), followed by the M-step; then up to
  ``max_iter`` EM iterations, stopped when the mean log-likelihood changes by less than ``tol``, and the
  posteriors under the final parameters. All-equal losses carry no information: every sample gets clean
  probability 1 (the step then reduces to MixMatch on the noisy labels). The official code's averaging of the
  losses over the last 5 epochs for 90% noise is not implemented.
- MixUp's ``lambda`` comes from a NumPy generator seeded once in ``setup`` from the method's torch generator,
  which also draws the permutations (one ``lambda`` and one permutation per network per step).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nlbench.benchmark.augment import random_crop_flip
from nlbench.errors import NLBenchError
from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Choice, Range

__all__ = ["DivideMix", "Ensemble", "co_guess", "gmm_clean_probability", "mix_lambda", "rampup_weight",
           "refine_labels", "resolve_rampup", "resolve_warmup", "semi_loss", "sharpen"]

#: The official GMM settings (scikit-learn's GaussianMixture in the official Train_cifar.py).
GMM_MAX_ITER, GMM_TOL, GMM_REG_COVAR = 10, 1e-2, 5e-4


def resolve_warmup(warmup: int | None, epochs: int) -> int:
    """Warm-up epochs: ``min(10, max(1, epochs // 10))`` by default, an explicit value clipped to
    ``max(1, epochs - 1)``."""
    if warmup is None:
        return min(10, max(1, epochs // 10))
    return max(1, min(int(warmup), epochs - 1))


def resolve_rampup(rampup: int | None, epochs: int, warmup: int) -> int:
    """Ramp-up epochs of ``lambda_u``: ``min(16, max(1, (epochs - warmup) // 2))`` by default, an explicit value
    clipped to ``max(1, epochs - warmup)``."""
    if rampup is None:
        return min(16, max(1, (epochs - warmup) // 2))
    return max(1, min(int(rampup), epochs - warmup))


def rampup_weight(t: float, warmup: int, rampup: int) -> float:
    """``clip((t - warmup) / rampup, 0, 1)`` for the fractional 0-based epoch ``t``."""
    return min(max((t - warmup) / rampup, 0.0), 1.0)


def _gmm_m_step(x: torch.Tensor, resp: torch.Tensor, reg_covar: float):
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps
    means = (resp * x[:, None]).sum(0) / nk
    var = (resp * (x[:, None] - means) ** 2).sum(0) / nk + reg_covar
    return nk / len(x), means, var


def _gmm_e_step(x: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, var: torch.Tensor):
    log_p = -0.5 * (math.log(2 * math.pi) + var.log() + (x[:, None] - means) ** 2 / var) + weights.log()
    norm = torch.logsumexp(log_p, dim=1)
    return norm, log_p - norm[:, None]


@torch.no_grad()
def gmm_clean_probability(loss: torch.Tensor, *, max_iter: int = GMM_MAX_ITER, tol: float = GMM_TOL,
                          reg_covar: float = GMM_REG_COVAR) -> torch.Tensor:
    """Clean probability of every sample from its loss: the posterior of the smaller-mean component of a
    two-component 1-D Gaussian mixture fitted by EM to the min-max normalised losses.

    Deterministic (no RNG): initial responsibilities are the hard split of the normalised losses at 0.5, then
    up to ``max_iter`` EM iterations until the mean log-likelihood changes by less than ``tol``; ``reg_covar`` is
    added to both variances. Computed in float64, returned as float32 on ``loss``'s device. All-equal losses
    (or fewer than two samples) give probability 1 everywhere.
    """
    x = loss.detach().flatten().to(torch.float64)
    if len(x) < 2:
        return torch.ones(len(x), device=loss.device)
    lo, hi = x.min(), x.max()
    span = float(hi - lo)
    if not span > 0:
        return torch.ones(len(x), device=loss.device)
    x = (x - lo) / span
    high = (x > 0.5).to(torch.float64)
    params = _gmm_m_step(x, torch.stack([1 - high, high], dim=1), reg_covar)
    lower_bound = -math.inf
    for _ in range(max_iter):
        norm, log_resp = _gmm_e_step(x, *params)
        params = _gmm_m_step(x, log_resp.exp(), reg_covar)
        prev, lower_bound = lower_bound, float(norm.mean())
        if abs(lower_bound - prev) < tol:
            break
    _, log_resp = _gmm_e_step(x, *params)
    clean = int(params[1].argmin())
    return log_resp[:, clean].exp().float()


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening of each row: ``p^(1/T) / sum_c p_c^(1/T)``, computed as ``softmax(log p / T)`` so
    that a small ``T`` cannot underflow every ``p_c^(1/T)`` to 0 (0/0)."""
    return F.softmax(p.float().clamp_min(torch.finfo(torch.float32).tiny).log() / temperature, dim=1)


def refine_labels(p_own: torch.Tensor, y: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label co-refinement: ``sharpen(w * onehot(y) + (1 - w) * p_own, T)``; ``p_own`` ``(B, C)`` is the network's
    mean prediction over the views, ``w`` ``(B,)`` the clean probability from the peer's mixture."""
    onehot = F.one_hot(y, p_own.shape[1]).to(p_own.dtype)
    w = w.to(p_own.dtype)[:, None]
    return sharpen(w * onehot + (1 - w) * p_own, temperature)


def co_guess(p1: torch.Tensor, p2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Label co-guessing: ``sharpen((p1 + p2) / 2, T)`` of the two networks' mean predictions over the views."""
    return sharpen((p1 + p2) / 2, temperature)


def mix_lambda(rng: np.random.Generator, alpha: float) -> float:
    """MixUp's ``lambda' = max(lambda, 1 - lambda)`` with ``lambda ~ Beta(alpha, alpha)``; always >= 0.5."""
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def semi_loss(logits: torch.Tensor, targets: torch.Tensor,
              labelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Lx, Lu, Lreg)`` of mixed rows: ``logits`` and soft ``targets`` ``(n, C)``, ``labelled`` ``(n,)`` bool.

    ``Lx``: mean over labelled rows of ``-sum_c t_c log softmax_c``; ``Lu``: mean over unlabelled rows and classes
    of ``(softmax_c - t_c)^2``; a term without rows is 0. ``Lreg = sum_c (1/C) log((1/C) / pbar_c)`` with ``pbar``
    the mean softmax over all rows.
    """
    logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    m = labelled.to(log_p.dtype)
    n_x = m.sum()
    n_u = len(m) - n_x
    lx = (-(targets * log_p).sum(dim=1) * m).sum() / n_x.clamp_min(1)
    lu = (((log_p.exp() - targets) ** 2).mean(dim=1) * (1 - m)).sum() / n_u.clamp_min(1)
    c = logits.shape[1]
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
    reg = (-math.log(c) - log_mean).sum() / c
    return lx, lu, reg


class Ensemble(nn.Module):
    """Log of the mean softmax of two networks (argmax = the ensemble's prediction)."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.net1, self.net2 = net1, net2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.net1(x).float().softmax(dim=1) + self.net2(x).float().softmax(dim=1)) / 2
        return p.clamp_min(torch.finfo(torch.float32).tiny).log()


@register_method("dividemix")
class DivideMix(Method):
    """DivideMix: two networks co-divide the pool by a GMM on per-sample losses and train with MixMatch.

    After a cross-entropy warm-up, each network's clean/noisy split comes from its peer's two-component mixture
    on the losses; labelled samples get co-refined labels, unlabelled ones co-guessed labels, and the ensemble
    of both networks is evaluated. See the module docstring for the defaults and nlbench's choices.
    """

    def __init__(self, *, warmup: Annotated[int, Range(1, 10_000)] | None = None,
                 rampup: Annotated[int, Range(1, 10_000)] | None = None,
                 p_threshold: Annotated[float, Range(0, 1, high_open=True)] = 0.5,
                 temperature: Annotated[float, Range(0, 10, low_open=True)] = 0.5,
                 alpha: Annotated[float, Range(0, 100, low_open=True)] = 4.0,
                 lambda_u: Annotated[float, Range(0, 1000)] = 25.0,
                 lambda_r: Annotated[float, Range(0, 100)] = 1.0,
                 penalty: bool = False,
                 views: Annotated[str, Choice("same", "crop-flip")] = "same"):
        super().__init__()
        self.warmup, self.rampup = warmup, rampup
        self.p_threshold, self.temperature, self.alpha = float(p_threshold), float(temperature), float(alpha)
        self.lambda_u, self.lambda_r, self.penalty, self.views = float(lambda_u), float(lambda_r), penalty, views
        self.warmup_epochs: int | None = None
        self.rampup_epochs: int | None = None
        #: clean probabilities over the training set from each network's mixture (None during warm-up)
        self.prob1: torch.Tensor | None = None
        self.prob2: torch.Tensor | None = None
        #: the epochs at whose start the mixtures were fitted
        self.gmm_epochs: list[int] = []

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        if self.views == "crop-flip" and (ctx.train_x is None or ctx.train_x.ndim != 4):
            raise NLBenchError("dividemix: views='crop-flip' needs image inputs (N, C, H, W); use views='same'")
        self.warmup_epochs = resolve_warmup(self.warmup, ctx.epochs)
        self.rampup_epochs = resolve_rampup(self.rampup, ctx.epochs, self.warmup_epochs)
        self.net2 = ctx.new_model(1)
        self.ensemble = Ensemble(ctx.model, self.net2)
        seed = torch.randint(2 ** 31, (1,), generator=ctx.generator, device=ctx.generator.device)
        self.rng = np.random.default_rng(int(seed))

    def networks(self) -> list[nn.Module]:
        return [self.net2]

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.ensemble

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        if epoch <= self.warmup_epochs:
            return
        y = self.ctx.train_y
        loss1 = F.cross_entropy(self.ctx.predict(model), y, reduction="none")
        loss2 = F.cross_entropy(self.ctx.predict(self.net2), y, reduction="none")
        self.prob1, self.prob2 = gmm_clean_probability(loss1), gmm_clean_probability(loss2)
        self.gmm_epochs.append(epoch)

    def _warmup_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        if self.penalty:  # negative entropy: penalises confident predictions
            log_p = F.log_softmax(logits, dim=1)
            loss = loss + (log_p.exp() * log_p).sum(dim=1).mean()
        return loss

    def _views(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.views == "same":
            return batch.x, None
        raw = self.ctx.train_x[batch.idx]
        g = self.ctx.generator
        return self.ctx.prep(random_crop_flip(raw, g)), self.ctx.prep(random_crop_flip(raw, g))

    @torch.no_grad()
    def _mean_prediction(self, net: nn.Module, v1: torch.Tensor, v2: torch.Tensor | None) -> torch.Tensor:
        p = net(v1).float().softmax(dim=1)
        return p if v2 is None else (p + net(v2).float().softmax(dim=1)) / 2

    def _mixmatch_loss(self, net: nn.Module, v1: torch.Tensor, v2: torch.Tensor | None, targets: torch.Tensor,
                       labelled: torch.Tensor, lambda_u: float) -> torch.Tensor:
        inputs = torch.cat([v1, v1 if v2 is None else v2])
        targets, labelled = torch.cat([targets, targets]), torch.cat([labelled, labelled])
        lam = mix_lambda(self.rng, self.alpha)
        perm = torch.randperm(len(inputs), generator=self.ctx.generator, device=self.ctx.generator.device)
        perm = perm.to(inputs.device)
        mixed = lam * inputs + (1 - lam) * inputs[perm]
        mixed_t = lam * targets + (1 - lam) * targets[perm]
        lx, lu, reg = semi_loss(net(mixed), mixed_t, labelled)
        return lx + lambda_u * lu + self.lambda_r * reg

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        if self.prob1 is None:
            return StepOutput(self._warmup_loss(model(batch.x), batch.y)
                              + self._warmup_loss(self.net2(batch.x), batch.y))
        v1, v2 = self._views(batch)
        p1, p2 = self._mean_prediction(model, v1, v2), self._mean_prediction(self.net2, v1, v2)
        guess = co_guess(p1, p2, self.temperature)
        t = batch.step / max(1, self.ctx.steps_per_epoch)
        lambda_u = self.lambda_u * rampup_weight(t, self.warmup_epochs, self.rampup_epochs)
        total = torch.zeros((), device=batch.x.device)
        # each network trains on the division made by its PEER's mixture (co-divide)
        for net, p_own, prob_peer in ((model, p1, self.prob2), (self.net2, p2, self.prob1)):
            w = prob_peer[batch.idx]
            labelled = w > self.p_threshold
            refined = refine_labels(p_own, batch.y, w, self.temperature)
            targets = torch.where(labelled[:, None], refined, guess)
            total = total + self._mixmatch_loss(net, v1, v2, targets, labelled, lambda_u)
        return StepOutput(total)

    def options(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "rampup": self.rampup, "p_threshold": self.p_threshold,
                "temperature": self.temperature, "alpha": self.alpha, "lambda_u": self.lambda_u,
                "lambda_r": self.lambda_r, "penalty": self.penalty, "views": self.views,
                "warmup_used": self.warmup_epochs, "rampup_used": self.rampup_epochs}
