"""DivideMix (Li, Socher and Hoi, "DivideMix: Learning with Noisy Labels as Semi-supervised Learning", ICLR 2020).

Faithful to the official code, github.com/LiJunnan1992/DivideMix, ``Train_cifar.py`` (the loop, the losses, the
GMM) and ``dataloader_cifar.py`` (the loaders that make the batches). Two networks are trained in turn:

- warm-up epochs (official ``warmup``): network 1 makes one pass over the whole noisy pool in shuffled batches of
  2B (the warm-up loader's ``batch_size * 2``) with cross-entropy, then network 2 makes its own pass, so an epoch
  has ``2 * ceil(n / 2B)`` steps. For asymmetric noise the official code adds the confidence penalty, the
  negative entropy ``mean_rows sum_c p_c log p_c`` (``NegEntropy``), to the warm-up loss (option ``penalty``).
- every later epoch starts with ``eval_train`` for both networks: the per-sample cross-entropy over the pool in
  eval mode without augmentation, min-max normalised, and scikit-learn's ``GaussianMixture(n_components=2,
  max_iter=10, tol=1e-2, reg_covar=5e-4)`` (k-means initialisation) fitted to it; a sample's clean probability
  ``w`` is the posterior of the component with the smaller mean. Then (co-divide) network 1 trains on network
  2's division, with network 2 fixed in eval mode, and afterwards network 2 on network 1's division with the
  just-trained network 1 fixed: labelled are the samples with ``w > p_threshold``. A network's pass has one step
  per batch of its labelled loader (``ceil(|L| / B)`` steps, shuffled); every step also draws B samples from the
  unlabelled loader, which is re-shuffled and restarted whenever it runs out. So the epoch has
  ``ceil(|L_2| / B) + ceil(|L_1| / B)`` steps (:meth:`DivideMix.epoch_steps`), each training ONE network: the
  harness's optimiser skips parameters without a gradient (it zeroes gradients to None every step), so the idle
  network's weights, momentum and weight decay are untouched, as with the official two optimisers.
- one step (official ``train``), with ``x1, x2`` the K = 2 views of the B labelled samples and ``u1, u2`` of the
  unlabelled ones, ``p(net, v)`` the softmax: label co-guessing ``targets_u = sharpen((p(net, u1) + p(net, u2)
  + p(peer, u1) + p(peer, u2)) / 4, T)``; label co-refinement ``targets_x = sharpen(w onehot(y) + (1 - w)
  (p(net, x1) + p(net, x2)) / 2, T)`` with the peer's ``w``; ``sharpen(p, T) = p^(1/T) / sum_c p_c^(1/T)``
  (these six forward passes run without gradients, the trained network in train mode); MixUp of the 2B + 2B
  rows ``[x1, x2, u1, u2]`` with a random permutation of them, ``l ~ Beta(alpha, alpha)``, ``l = max(l, 1 -
  l)``; ``loss = Lx + lambda_u(t) Lu + lambda_r Lreg`` on the mixed rows' logits: ``Lx`` the soft cross-entropy
  over the 2B labelled-origin rows, ``Lu`` the mean squared error between softmax and target over the
  unlabelled-origin rows (mean over rows and classes), ``Lreg = sum_c pi_c log(pi_c / mean_rows p_c)`` with the
  uniform prior ``pi``, over all rows. ``lambda_u(t) = lambda_u clip((t - warmup) / rampup, 0, 1)`` with the
  official ``t = epoch + batch_idx / num_iter`` (0-based epoch, ``num_iter = |L| // B + 1``, ``batch_idx``
  restarting for each network).
- the evaluated model (official ``test``) is the ensemble whose prediction is the argmax of the SUM of both
  networks' logits.
- the history (:meth:`DivideMix.epoch_log`) records the division of every epoch after the warm-up:
  ``labelled_share_net1`` and ``labelled_share_net2``, the shares of the pool that network 1's and network 2's
  mixtures label clean, and ``labelled_share``, their mean (warm-up epochs have no division and log nothing).

Defaults (paper Section 4.1 and Appendix B; official script defaults): ``T = 0.5``, ``alpha = 4``,
``p_threshold = 0.5``, ``lambda_r = 1`` (the official loss adds the regulariser with weight 1), rampup of
``lambda_u`` over 16 epochs after the warm-up (official ``linear_rampup``), warm-up 10 of 300 epochs (CIFAR-10; 30
for CIFAR-100). ``lambda_u``: the paper's table of ``lambda_u`` per setting (Appendix B) has, for CIFAR-10,
symmetric 20% -> 0, 50% -> 25, 80% -> 25, 90% -> 50, asymmetric 40% -> 0 (CIFAR-100: symmetric 20% -> 25, 50%,
80%, 90% -> 150). nlbench chooses per noise FAMILY (:attr:`DivideMix.family_defaults`), never per noise rate,
which a practitioner does not know (reading it would flag the method ``uses_noise_rate``):

- ``symmetric`` (and ``clean``): ``lambda_u = 25`` (the official default, the paper's 50% and 80% value), no
  penalty (official ``--noise_mode sym``);
- ``class-dependent`` (pairflip, flipback, asym, background): ``lambda_u = 0`` and ``penalty = True``, the
  official asymmetric configuration (``--noise_mode asym``; 0 is the paper's asymmetric 40% value);
- ``instance`` (idn) and ``human`` (CIFAR-N): also ``lambda_u = 0`` and ``penalty = True``. The official code
  has no CIFAR setting for them; both are structured noise (the wrong label depends on the image, and goes to a
  similar class), which is what the penalty is for: the paper adds it because cross-entropy warm-up fits
  asymmetric noise confidently, so noisy samples get small losses and the GMM cannot separate them. For real
  human noise the official code's choice is the same: ``Train_clothing1M.py`` warms up with the penalty and
  trains without an unsupervised term (``loss = Lx + penalty``, ``--lambda_u 0``).

Differences from the official code, and why:

- the harness's run: its model (the official one is a PreAct ResNet-18), optimiser settings and learning-rate
  schedule (official: SGD 0.02, momentum 0.9, weight decay 5e-4, /10 at epoch 150 of 300) and mixed precision
  (bf16 autocast on CUDA); one SGD optimiser holds both networks, equivalent to the official two because a
  step trains only one network (see above). The learning rate follows the schedule by fractional epoch: with
  the step schedule it is constant within an epoch, as in the official code; with a cosine schedule network 2's
  pass (the second half of the epoch's steps) gets a slightly smaller rate than network 1's.
- warm-up length (option ``warmup``, in epochs; None: ``min(10, max(1, epochs // 10))``): the paper's 10 for
  runs of 100 epochs or more, 3 for the 30-epoch memorisation protocol, 1 for short runs; an explicit value is
  clipped to ``max(1, epochs - 1)`` so that at least one MixMatch epoch runs. Ramp-up (option ``rampup``; None:
  ``min(16, max(1, (epochs - warmup) // 2))``); an explicit value is clipped to ``max(1, epochs - warmup)``.
- augmentation (option ``views``): the official loaders crop (4-pixel zero padding) and flip every view
  independently, warm-up batches included. The method draws its own batches (the harness's are ignored), so it
  augments them itself: ``"auto"`` (default) augments with that crop-flip iff the run augments its batches
  (``--augment``, ``MethodContext.augment``), so
  Fashion-MNIST's memorisation protocol, which has no augmentation, runs DivideMix on the same plain inputs as
  every other method (the two views are then equal); ``"crop-flip"`` always (image inputs only), ``"none"``
  never.
- the GMM's ``random_state`` (official: none, i.e. NumPy's global state) is drawn from the method's seeded
  generator for each fit, so runs are deterministic. Degenerate losses (all equal, or fewer than two samples),
  where the official normalisation divides by zero and scikit-learn refuses the NaNs, give every sample clean
  probability 1; scikit-learn's ConvergenceWarning (10 iterations rarely converge) is silenced.
- rate-dependent settings are not implemented: for 90% noise the official code averages the normalised losses
  over the last 5 epochs before the GMM and the paper uses ``p_threshold = 0.6``; and ``lambda_u`` is the
  family's, not the table's per-rate and per-dataset value (CIFAR-100's 150 is not used).
- a trailing batch of one sample (labelled, unlabelled or warm-up) is not drawn, as in the harness (BatchNorm
  in train mode needs two samples); the official loaders keep it. An unlabelled set of fewer than two samples
  gives steps without unlabelled rows (mixed rows are the labelled views only, ``Lu = 0``), where the official
  code would fail; a network with fewer than two labelled samples makes no steps (the official loop makes
  ``ceil(|L| / B)``, i.e. none for an empty set), and an epoch with no step at all makes the harness's one
  step a no-op.
- ``sharpen`` is computed as ``softmax(log p / T)``: the same value, without the underflow of ``p^(1/T)`` for
  a small ``T``. MixUp's ``l`` comes from a NumPy generator seeded once from the method's torch generator, which
  draws the shuffles, the permutations and the augmentation.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import nn

from nlbench.benchmark.augment import random_crop_flip
from nlbench.errors import DivergenceError, NLBenchError
from nlbench.methods.base import Batch, Method, MethodContext, StepOutput, register_method
from nlbench.options import Choice, Range

__all__ = ["DivideMix", "Ensemble", "batch_count", "co_guess", "gmm_clean_probability", "mix_lambda",
           "mixmatch_loss", "neg_entropy", "rampup_weight", "refine_labels", "resolve_rampup", "resolve_warmup",
           "semi_loss", "sharpen"]

#: The official GMM settings (scikit-learn's GaussianMixture in the official Train_cifar.py, ``eval_train``).
GMM_MAX_ITER, GMM_TOL, GMM_REG_COVAR = 10, 1e-2, 5e-4

#: The official asymmetric-noise configuration (``--noise_mode asym``), used for every structured family.
_STRUCTURED = {"penalty": True, "lambda_u": 0.0}


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
    """``clip((t - warmup) / rampup, 0, 1)`` for the fractional 0-based epoch ``t`` (official ``linear_rampup``
    without the factor ``lambda_u``)."""
    return min(max((t - warmup) / rampup, 0.0), 1.0)


def batch_count(n: int, batch: int) -> int:
    """Batches of a shuffled pass over ``n`` samples in batches of ``batch``: ``ceil(n / batch)`` as the official
    loaders (``drop_last=False``), less a trailing batch of a single sample."""
    return n // batch + (n % batch >= 2)


@torch.no_grad()
def gmm_clean_probability(loss: torch.Tensor, *, random_state: int | None, max_iter: int = GMM_MAX_ITER,
                          tol: float = GMM_TOL, reg_covar: float = GMM_REG_COVAR) -> torch.Tensor:
    """Clean probability of every sample from its loss, as the official ``eval_train``: the losses are min-max
    normalised (float32), scikit-learn's two-component ``GaussianMixture(max_iter, tol, reg_covar,
    random_state)`` (k-means initialisation) is fitted to them, and the posterior of the component with the
    smaller mean is returned (float32, on ``loss``'s device). All-equal losses or fewer than two samples give
    probability 1 everywhere."""
    x = loss.detach().flatten().float()
    if len(x) < 2:
        return torch.ones(len(x), device=loss.device)
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        return torch.ones(len(x), device=loss.device)
    arr = ((x - lo) / (hi - lo)).cpu().numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar,
                          random_state=random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(arr)
    prob = gmm.predict_proba(arr)[:, int(np.argmin(gmm.means_))]
    return torch.as_tensor(np.asarray(prob, dtype=np.float32), device=loss.device)


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


def co_guess(probs: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Label co-guessing: ``sharpen(mean(probs), T)`` of the softmax predictions of both networks on both views
    (official order: own network on view 1, view 2, then the peer on view 1, view 2)."""
    total = probs[0]
    for p in probs[1:]:
        total = total + p
    return sharpen(total / len(probs), temperature)


def mix_lambda(rng: np.random.Generator, alpha: float) -> float:
    """MixUp's ``lambda' = max(lambda, 1 - lambda)`` with ``lambda ~ Beta(alpha, alpha)``; always >= 0.5."""
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The official ``NegEntropy``: ``mean_rows sum_c p_c log p_c`` (<= 0), the warm-up's confidence penalty."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * log_p).sum(dim=1).mean()


def semi_loss(logits: torch.Tensor, targets: torch.Tensor,
              n_labelled: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Lx, Lu, Lreg)`` of mixed rows whose first ``n_labelled`` rows are of labelled origin (official
    ``SemiLoss`` and the regulariser): ``Lx`` the mean over those rows of ``-sum_c t_c log softmax_c``; ``Lu``
    the mean over the other rows and the classes of ``(softmax_c - t_c)^2`` (0 without such rows); ``Lreg =
    sum_c (1/C) log((1/C) / pbar_c)`` with ``pbar`` the mean softmax over all rows."""
    logits = logits.float()
    log_p = F.log_softmax(logits, dim=1)
    lx = -(targets[:n_labelled] * log_p[:n_labelled]).sum(dim=1).mean()
    if n_labelled < len(logits):
        lu = ((log_p[n_labelled:].exp() - targets[n_labelled:]) ** 2).mean()
    else:
        lu = torch.zeros((), device=logits.device)
    c = logits.shape[1]
    log_mean = torch.logsumexp(log_p, dim=0) - math.log(len(logits))
    reg = (-math.log(c) - log_mean).sum() / c
    return lx, lu, reg


def mixmatch_loss(net: nn.Module, peer: nn.Module, x1: torch.Tensor, x2: torch.Tensor, u1: torch.Tensor,
                  u2: torch.Tensor, y: torch.Tensor, w: torch.Tensor, *, lam: float, perm: torch.Tensor,
                  temperature: float, lambda_u: float, lambda_r: float = 1.0) -> torch.Tensor:
    """The loss of one official training step (``Train_cifar.py``, ``train``) for network ``net`` with the fixed
    ``peer``, given MixUp's ``lam`` (already ``max(l, 1 - l)``) and the permutation ``perm`` of the
    ``2 len(x1) + 2 len(u1)`` rows; the caller sets the networks' modes (``net`` train, ``peer`` eval).
    ``x1, x2`` are the labelled views, ``y`` their labels and ``w`` their clean probabilities, ``u1, u2`` the
    unlabelled views (may be empty: no co-guessing and ``Lu = 0``); ``lambda_u`` is the ramped weight."""
    has_u = len(u1) > 0
    with torch.no_grad():
        if has_u:  # co-guessing, in the official order of the forward passes
            probs = [m(v).float().softmax(dim=1) for m, v in ((net, u1), (net, u2), (peer, u1), (peer, u2))]
            targets_u = co_guess(probs, temperature)
        px = (net(x1).float().softmax(dim=1) + net(x2).float().softmax(dim=1)) / 2
        targets_x = refine_labels(px, y, w, temperature)
    inputs = [x1, x2, u1, u2] if has_u else [x1, x2]
    targets = [targets_x, targets_x, targets_u, targets_u] if has_u else [targets_x, targets_x]
    all_inputs, all_targets = torch.cat(inputs), torch.cat(targets)
    mixed = lam * all_inputs + (1 - lam) * all_inputs[perm]
    mixed_targets = lam * all_targets + (1 - lam) * all_targets[perm]
    lx, lu, reg = semi_loss(net(mixed), mixed_targets, 2 * len(x1))
    return lx + lambda_u * lu + lambda_r * reg


class Ensemble(nn.Module):
    """The official test-time ensemble: the sum of both networks' logits (its argmax is the prediction)."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.net1, self.net2 = net1, net2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net1(x).float() + self.net2(x).float()


@register_method("dividemix")
class DivideMix(Method):
    """DivideMix: two networks co-divide the pool by a GMM on per-sample losses and train with MixMatch.

    After a cross-entropy warm-up, each network trains in turn on the clean/noisy split from its peer's
    two-component mixture on the losses; labelled samples get co-refined labels, unlabelled ones co-guessed
    labels, and the ensemble of both networks is evaluated. See the module docstring for the defaults and the
    differences from the official code.
    """

    #: the official ``sym`` configuration by default; its ``asym`` one (confidence penalty in the warm-up,
    #: ``lambda_u = 0``) for structured noise (module docstring)
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "class-dependent": dict(_STRUCTURED), "instance": dict(_STRUCTURED), "human": dict(_STRUCTURED)}
    #: 2: scikit-learn's mixture, the official batch composition and order, summed logits at test time
    version = 2

    def __init__(self, *, warmup: Annotated[int, Range(1, 10_000)] | None = None,
                 rampup: Annotated[int, Range(1, 10_000)] | None = None,
                 p_threshold: Annotated[float, Range(0, 1, high_open=True)] = 0.5,
                 temperature: Annotated[float, Range(0, 10, low_open=True)] = 0.5,
                 alpha: Annotated[float, Range(0, 100, low_open=True)] = 4.0,
                 lambda_u: Annotated[float, Range(0, 1000)] = 25.0,
                 lambda_r: Annotated[float, Range(0, 100)] = 1.0,
                 penalty: bool = False,
                 views: Annotated[str, Choice("auto", "none", "crop-flip")] = "auto"):
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
        #: whether the views are crop-flipped (resolved in ``setup``; ``views="auto"`` follows the run's --augment)
        self.augment: bool | None = None
        #: the current epoch's passes, in order: one dict per network (see ``_plan``); the step within it
        self.passes: list[dict[str, Any]] = []
        self.step_in_epoch = 0
        self.epoch = 0
        #: the unlabelled loader of the current pass: its shuffled order and position
        self.unl_order: torch.Tensor | None = None
        self.unl_pos = 0
        #: shares of the pool labelled clean by network 1's and network 2's mixtures (NaN in warm-up, not logged)
        self.shares = (math.nan, math.nan)

    def setup(self, ctx: MethodContext) -> None:
        super().setup(ctx)
        images = ctx.train_x is not None and ctx.train_x.ndim == 4
        if self.views == "crop-flip" and not images:
            raise NLBenchError("dividemix: views='crop-flip' needs image inputs (N, C, H, W); use views='none'")
        self.augment = self.views == "crop-flip" or (self.views == "auto" and images and bool(ctx.augment))
        self.warmup_epochs = resolve_warmup(self.warmup, ctx.epochs)
        self.rampup_epochs = resolve_rampup(self.rampup, ctx.epochs, self.warmup_epochs)
        self.net2 = ctx.new_model(1)
        self.ensemble = Ensemble(ctx.model, self.net2)
        self.rng = np.random.default_rng(self._draw_int())

    def networks(self) -> list[nn.Module]:
        return [self.net2]

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.ensemble

    def _draw_int(self) -> int:
        g = self.ctx.generator
        return int(torch.randint(2 ** 31 - 1, (1,), generator=g, device=g.device))

    def _shuffled(self, idx: torch.Tensor) -> torch.Tensor:
        g = self.ctx.generator
        return idx[torch.randperm(len(idx), generator=g, device=g.device).to(idx.device)]

    def _net(self, k: int) -> nn.Module:
        return self.ctx.model if k == 0 else self.net2

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch, self.step_in_epoch = epoch, 0
        n, B = len(self.ctx.train_y), self.ctx.batch_size
        everything = torch.arange(n, device=self.ctx.train_y.device)
        if epoch <= self.warmup_epochs:  # official ``warmup``: each network one pass in batches of 2B
            self.prob1 = self.prob2 = None
            self.shares = (math.nan, math.nan)
            self.passes = [{"net": k, "order": self._shuffled(everything), "batch": 2 * B,
                            "steps": batch_count(n, 2 * B)} for k in (0, 1)]
            return
        y = self.ctx.train_y
        probs = []
        for net in (model, self.net2):  # official ``eval_train``: eval mode, no augmentation
            loss = F.cross_entropy(self.ctx.predict(net), y, reduction="none")
            if not bool(torch.isfinite(loss).all()):
                raise DivergenceError(f"non-finite training losses before the GMM of epoch {epoch}", epoch)
            probs.append(gmm_clean_probability(loss, random_state=self._draw_int()))
        self.prob1, self.prob2 = probs
        self.gmm_epochs.append(epoch)
        labelled = [p > self.p_threshold for p in probs]
        self.shares = tuple(float(m.float().mean()) for m in labelled)
        # co-divide: network 1 trains on network 2's division, then network 2 on network 1's
        self.passes = []
        for k, peer_prob, peer_labelled in ((0, self.prob2, labelled[1]), (1, self.prob1, labelled[0])):
            lab, unl = everything[peer_labelled], everything[~peer_labelled]
            self.passes.append({"net": k, "order": self._shuffled(lab), "w": peer_prob, "unlabelled": unl,
                                "batch": B, "steps": batch_count(len(lab), B), "num_iter": len(lab) // B + 1})

    def epoch_steps(self, epoch: int) -> int | None:
        return sum(p["steps"] for p in self.passes)

    def epoch_log(self) -> dict[str, float]:
        """The division of the epoch (nothing in warm-up epochs, which have none): ``labelled_share_net1`` and
        ``labelled_share_net2``, the shares of the pool that network 1's and network 2's mixtures label clean
        (network 2 trains on the first, network 1 on the second), and ``labelled_share``, their mean."""
        s1, s2 = self.shares
        if math.isnan(s1):
            return {}
        return {"labelled_share": (s1 + s2) / 2, "labelled_share_net1": s1, "labelled_share_net2": s2}

    def _view(self, idx: torch.Tensor) -> torch.Tensor:
        """One view of samples ``idx``, ready for the model: crop-flipped (fresh draws) iff ``augment``."""
        raw = self.ctx.train_x[idx]
        return self.ctx.prep(random_crop_flip(raw, self.ctx.generator) if self.augment else raw)

    def _views(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K = 2 views (independent augmentations; without augmentation the same tensor twice)."""
        if not self.augment:
            x = self._view(idx)
            return x, x
        return self._view(idx), self._view(idx)

    def _next_unlabelled(self, unl: torch.Tensor, size: int) -> torch.Tensor:
        """The next batch of the cycling unlabelled loader (official: restarted with a fresh shuffle when it
        runs out); a trailing single sample is skipped; empty if the set has fewer than two samples."""
        if len(unl) < 2:
            return unl[:0]
        if self.unl_order is None or len(self.unl_order) - self.unl_pos < 2:
            self.unl_order, self.unl_pos = self._shuffled(unl), 0
        out = self.unl_order[self.unl_pos:self.unl_pos + size]
        self.unl_pos += len(out)
        return out

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        i = self.step_in_epoch
        self.step_in_epoch += 1
        for p in self.passes:
            if i < p["steps"]:
                break
            i -= p["steps"]
        else:  # an epoch without any step: the harness's one step changes nothing
            return StepOutput(torch.zeros((), device=batch.x.device, requires_grad=True))
        if i == 0:
            self.unl_order, self.unl_pos = None, 0
        net, peer = self._net(p["net"]), self._net(1 - p["net"])
        idx = p["order"][i * p["batch"]:(i + 1) * p["batch"]]
        y = self.ctx.train_y[idx]
        net.train()
        if "w" not in p:  # warm-up (official ``warmup``): cross-entropy, plus the confidence penalty
            logits = net(self._view(idx)).float()
            loss = F.cross_entropy(logits, y)
            return StepOutput(loss + neg_entropy(logits) if self.penalty else loss)
        peer.eval()  # official: the peer is fixed in eval mode
        uidx = self._next_unlabelled(p["unlabelled"], p["batch"])
        x1, x2 = self._views(idx)
        u1, u2 = self._views(uidx)
        lam = mix_lambda(self.rng, self.alpha)
        g = self.ctx.generator
        perm = torch.randperm(2 * len(idx) + 2 * len(uidx), generator=g, device=g.device).to(x1.device)
        t = self.epoch - 1 + i / p["num_iter"]
        lambda_u = self.lambda_u * rampup_weight(t, self.warmup_epochs, self.rampup_epochs)
        loss = mixmatch_loss(net, peer, x1, x2, u1, u2, y, p["w"][idx], lam=lam, perm=perm,
                             temperature=self.temperature, lambda_u=lambda_u, lambda_r=self.lambda_r)
        return StepOutput(loss)

    def options(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "rampup": self.rampup, "p_threshold": self.p_threshold,
                "temperature": self.temperature, "alpha": self.alpha, "lambda_u": self.lambda_u,
                "lambda_r": self.lambda_r, "penalty": self.penalty, "views": self.views,
                "warmup_used": self.warmup_epochs, "rampup_used": self.rampup_epochs,
                "augment_used": self.augment}
