"""DivideMix against the official code, step by step, on fixed tensors.

The reference functions below transcribe github.com/LiJunnan1992/DivideMix, ``Train_cifar.py`` (``eval_train``,
``warmup``, ``train``, ``SemiLoss``, ``NegEntropy``, ``linear_rampup``) and ``dataloader_cifar.py``
(``cifar_dataloader.run``: the warm-up loader has ``batch_size * 2``, the labelled and unlabelled loaders
``batch_size``, all shuffled, ``drop_last=False``; ``train`` cycles the unlabelled loader). nlbench must give the
same clean probabilities, the same epoch lengths and batch composition, the same losses, and the official
configuration per noise family.
"""

from __future__ import annotations

import contextlib
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.mixture import GaussianMixture
from torch import nn

from nlbench.benchmark import harness
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import canonical_config, train
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods import dividemix as dm

# ---------------------------------------------------------------------------------------------------------------
# The reference: Train_cifar.py, transcribed (torch / scikit-learn, CPU, float32)


def official_eval_train_prob(losses: torch.Tensor, random_state: int) -> np.ndarray:
    """``eval_train`` after the loss loop: min-max normalise, fit the GMM, posterior of the smaller-mean component
    (the official call passes no random_state; the test fixes one)."""
    losses = (losses - losses.min()) / (losses.max() - losses.min())
    input_loss = losses.reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=random_state)
    gmm.fit(input_loss.numpy())
    prob = gmm.predict_proba(input_loss.numpy())
    return prob[:, gmm.means_.argmin()]


def official_linear_rampup(current: float, warm_up: int, lambda_u: float, rampup_length: int = 16) -> float:
    current = np.clip((current - warm_up) / rampup_length, 0.0, 1.0)
    return lambda_u * float(current)


def official_neg_entropy(outputs: torch.Tensor) -> torch.Tensor:
    probs = torch.softmax(outputs, dim=1)
    return torch.mean(torch.sum(probs.log() * probs, dim=1))


def official_warmup_loss(outputs: torch.Tensor, labels: torch.Tensor, noise_mode: str) -> torch.Tensor:
    loss = nn.CrossEntropyLoss()(outputs, labels)
    return loss + official_neg_entropy(outputs) if noise_mode == "asym" else loss


def official_train_loss(net, net2, inputs_x, inputs_x2, labels_x, w_x, inputs_u, inputs_u2, *, l, idx, epoch,
                        batch_idx, num_iter, warm_up, lambda_u, rampup_length, T=0.5, num_class=3):
    """The body of ``train`` for one batch, up to ``loss`` (``l`` is already ``max(l, 1 - l)``, ``idx`` the
    ``torch.randperm`` of all rows; ``epoch`` is 0-based)."""
    batch_size = inputs_x.size(0)
    labels_x = torch.zeros(batch_size, num_class).scatter_(1, labels_x.view(-1, 1), 1)
    w_x = w_x.view(-1, 1).type(torch.FloatTensor)
    with torch.no_grad():
        outputs_u11 = net(inputs_u)
        outputs_u12 = net(inputs_u2)
        outputs_u21 = net2(inputs_u)
        outputs_u22 = net2(inputs_u2)
        pu = (torch.softmax(outputs_u11, dim=1) + torch.softmax(outputs_u12, dim=1)
              + torch.softmax(outputs_u21, dim=1) + torch.softmax(outputs_u22, dim=1)) / 4
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        outputs_x = net(inputs_x)
        outputs_x2 = net(inputs_x2)
        px = (torch.softmax(outputs_x, dim=1) + torch.softmax(outputs_x2, dim=1)) / 2
        px = w_x * labels_x + (1 - w_x) * px
        ptx = px ** (1 / T)
        targets_x = ptx / ptx.sum(dim=1, keepdim=True)
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
    input_a, input_b = all_inputs, all_inputs[idx]
    target_a, target_b = all_targets, all_targets[idx]
    mixed_input = l * input_a + (1 - l) * input_b
    mixed_target = l * target_a + (1 - l) * target_b
    logits = net(mixed_input)
    logits_x = logits[:batch_size * 2]
    logits_u = logits[batch_size * 2:]
    # SemiLoss
    probs_u = torch.softmax(logits_u, dim=1)
    Lx = -torch.mean(torch.sum(F.log_softmax(logits_x, dim=1) * mixed_target[:batch_size * 2], dim=1))
    Lu = torch.mean((probs_u - mixed_target[batch_size * 2:]) ** 2)
    lamb = official_linear_rampup(epoch + batch_idx / num_iter, warm_up, lambda_u, rampup_length)
    prior = torch.ones(num_class) / num_class
    pred_mean = torch.softmax(logits, dim=1).mean(0)
    penalty = torch.sum(prior * torch.log(prior / pred_mean))
    return Lx + lamb * Lu + penalty


# ---------------------------------------------------------------------------------------------------------------
# 1. The mixture: scikit-learn's GaussianMixture with the official settings


def gamma_losses(n_clean: int, n_noisy: int, seed: int, outlier: bool = False) -> torch.Tensor:
    """Clean losses ~ Gamma(shape 2, rate 8), noisy ~ Gamma(shape 6, rate 3); optionally one outlier at 1.5x the
    largest loss."""
    rng = np.random.default_rng(seed)
    loss = np.concatenate([rng.gamma(2.0, 1 / 8, n_clean), rng.gamma(6.0, 1 / 3, n_noisy)])
    if outlier:
        loss = np.append(loss, 1.5 * loss.max())
    return torch.tensor(loss, dtype=torch.float32)


@pytest.mark.parametrize(("seed", "random_state"), [(0, 0), (1, 1), (2, 2), (3, 7)])
def test_gmm_equals_official_on_80_percent_noise(seed, random_state):
    """800 clean + 3200 noisy losses: the official GMM labels about half of them clean (the hand-written EM that
    nlbench had before, started from the split at 0.5, labelled 93-99% clean)."""
    loss = gamma_losses(800, 3200, seed)
    ours = dm.gmm_clean_probability(loss, random_state=random_state)
    ref = official_eval_train_prob(loss.clone(), random_state)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    share = float((ours > 0.5).float().mean())
    assert share == pytest.approx(float((ref > 0.5).mean()), abs=1e-3)
    assert 0.44 <= share <= 0.56


@pytest.mark.parametrize("seed", [0, 1])
def test_gmm_equals_official_with_an_outlier(seed):
    loss = gamma_losses(2000, 2000, seed, outlier=True)
    ours = dm.gmm_clean_probability(loss, random_state=seed)
    np.testing.assert_allclose(ours.numpy(), official_eval_train_prob(loss.clone(), seed), atol=1e-6)
    assert 0.49 <= float((ours > 0.5).float().mean()) <= 0.53  # official: 51%
    assert ours[-1] < 0.5


# ---------------------------------------------------------------------------------------------------------------
# 2. An epoch: its steps, the batches, the networks' modes, the losses, and which network an update moves

N, B, C = 22, 4, 3


class Recorder(nn.Module):
    """A linear network that logs every forward pass: (name, train mode, the sample ids of the input rows)."""

    def __init__(self, name: str, log: list, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.name, self.log, self.lin = name, log, nn.Linear(2, C)

    def forward(self, x):
        self.log.append((self.name, self.training, x[:, 0].round().long().tolist()))
        return self.lin(x)


def epoch_setup(monkeypatch, prob1, prob2, *, epoch=2, **opts):
    """A DivideMix on N samples ``x_i = (i, 1)`` after a 1-epoch warm-up, whose mixtures give ``prob1`` (network
    1's) and ``prob2``; a harness-like SGD over both networks (momentum and weight decay)."""
    fits = iter([torch.as_tensor(prob1, dtype=torch.float32), torch.as_tensor(prob2, dtype=torch.float32)])
    monkeypatch.setattr(dm, "gmm_clean_probability", lambda loss, random_state: next(fits))
    log: list = []
    net1, net2 = Recorder("net1", log, 1), Recorder("net2", log, 2)
    x = torch.stack([torch.arange(N, dtype=torch.float32), torch.ones(N)], dim=1)  # column 0: the sample id
    y = torch.arange(N) % C
    ctx = MethodContext(model=net1, meta_x=torch.zeros(0, 2), meta_y=torch.zeros(0, dtype=torch.long),
                        num_train=N, num_classes=C, batch_size=B, device=torch.device("cpu"),
                        generator=torch.Generator().manual_seed(0), prep=lambda v: v,
                        autocast=contextlib.nullcontext, train_x=x, train_y=y, epochs=4, steps_per_epoch=6,
                        model_factory=lambda k: net2)
    m = create_method("dividemix", warmup=1, **opts)
    m.setup(ctx)
    opt = torch.optim.SGD([*net1.parameters(), *net2.parameters()], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for net in (net1, net2):
        net.train()
    m.on_epoch_start(epoch, net1)
    return m, x, y, net1, net2, log, opt


def labelled_probs(n_labelled: int, seed: int) -> torch.Tensor:
    """Clean probabilities with ``n_labelled`` values in (0.5, 1) and the others in (0, 0.5), in random order."""
    g = torch.Generator().manual_seed(seed)
    p = torch.cat([0.55 + 0.44 * torch.rand(n_labelled, generator=g), 0.45 * torch.rand(N - n_labelled,
                                                                                        generator=g)])
    return p[torch.randperm(N, generator=g)]


def harness_update(opt, loss):
    """What the harness does with a step's loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def params(net):
    return [p.detach().clone() for p in net.parameters()]


def test_mixmatch_epoch_follows_the_official_loop(monkeypatch):
    """Network 2's mixture labels 14 samples (network 1 trains on them: ceil(14/4) = 4 steps, unlabelled 8 = two
    batches, so the unlabelled loader restarts after step 2), network 1's labels 10 (network 2: 3 steps, 12
    unlabelled). Every step equals the official ``train`` step on the same batches, l and permutation."""
    prob1, prob2 = labelled_probs(10, 1), labelled_probs(14, 2)
    m, x, y, net1, net2, log, opt = epoch_setup(monkeypatch, prob1, prob2)
    lab_of = {"net1": set(torch.nonzero(prob2 > 0.5).squeeze(1).tolist()),
              "net2": set(torch.nonzero(prob1 > 0.5).squeeze(1).tolist())}
    assert m.epoch_steps(2) == 4 + 3
    assert m.epoch_log()["labelled_share_net1"] == pytest.approx(10 / N)
    assert m.epoch_log()["labelled_share_net2"] == pytest.approx(14 / N)
    perms: list[torch.Tensor] = []
    real_randperm = torch.randperm

    def spy(*args, **kw):
        perms.append(real_randperm(*args, **kw))
        return perms[-1]

    monkeypatch.setattr(torch, "randperm", spy)
    seen: dict[str, list[list[int]]] = {"net1": [], "net2": []}
    unl_seen: dict[str, list[list[int]]] = {"net1": [], "net2": []}
    batch_idx = {"net1": 0, "net2": 0}
    for step in range(7):
        trainee, peer = (net1, net2) if step < 4 else (net2, net1)
        name = trainee.name
        before_idle = params(peer)
        rng = copy.deepcopy(m.rng)
        log.clear()
        loss = m.step(Batch(torch.zeros(B, 2), y[:B], torch.arange(B), 0.1, step, 2), net1).loss
        calls = list(log)
        # official order and modes: net(u), net(u2), net2(u), net2(u2) [peer in eval mode], net(x), net(x2), mixed
        assert [(c[0], c[1]) for c in calls] == [(name, True)] * 2 + [(peer.name, False)] * 2 + [(name, True)] * 3
        u, x_ids = calls[0][2], calls[4][2]
        assert calls[1][2] == u == calls[2][2] == calls[3][2] and calls[5][2] == x_ids
        assert len(u) == B and set(x_ids) <= lab_of[name] and not set(u) & lab_of[name]
        assert len(calls[6][2]) == 2 * len(x_ids) + 2 * len(u)
        seen[name].append(x_ids)
        unl_seen[name].append(u)
        # the official loss on the same batches, with the same l and permutation
        beta = rng.beta(4.0, 4.0)
        lam = max(beta, 1 - beta)
        idx = perms[-1]
        assert sorted(idx.tolist()) == list(range(2 * len(x_ids) + 2 * len(u)))
        lab, unl = torch.tensor(x_ids), torch.tensor(u)
        peer_prob = prob2 if name == "net1" else prob1
        num_iter = len(lab_of[name]) // B + 1
        ref = official_train_loss(trainee.lin, peer.lin, x[lab], x[lab], y[lab], peer_prob[lab], x[unl], x[unl],
                                  l=lam, idx=idx, epoch=1, batch_idx=batch_idx[name], num_iter=num_iter,
                                  warm_up=1, lambda_u=25.0, rampup_length=1)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
        batch_idx[name] += 1
        harness_update(opt, loss)
        # only the trained network moves (the idle one has no gradient: SGD skips it, momentum and weight decay
        # included), as with the official two optimisers
        assert all(torch.equal(a, b) for a, b in zip(before_idle, params(peer), strict=True))
    # each pass covers its labelled set once, in batches of B (the last one shorter)
    assert [len(s) for s in seen["net1"]] == [4, 4, 4, 2] and [len(s) for s in seen["net2"]] == [4, 4, 2]
    for name in ("net1", "net2"):
        ids = [i for s in seen[name] for i in s]
        assert sorted(ids) == sorted(lab_of[name])
    # the unlabelled loader cycles: net 1's 8 unlabelled samples twice, each cycle a permutation
    unl1 = sorted(set(range(N)) - lab_of["net1"])
    assert sorted(unl_seen["net1"][0] + unl_seen["net1"][1]) == unl1
    assert sorted(unl_seen["net1"][2] + unl_seen["net1"][3]) == unl1
    assert sorted(i for s in unl_seen["net2"] for i in s) == sorted(set(range(N)) - lab_of["net2"])


def test_lambda_u_ramps_with_the_official_fraction(monkeypatch):
    """Epoch 3 (0-based 2), warm-up 1, ramp-up 1: the ramp is complete, so lambda_u enters fully; with
    lambda_u = 0 (the asym configuration) the loss has no unlabelled term."""
    prob1, prob2 = labelled_probs(10, 1), labelled_probs(14, 2)
    losses, seen = {}, {}
    real = dm.mixmatch_loss

    def spy(net, peer, *args, **kw):
        seen.update(kw)
        return real(net, peer, *args, **kw)

    monkeypatch.setattr(dm, "mixmatch_loss", spy)
    for lambda_u in (25.0, 0.0):
        m, *_ = epoch_setup(monkeypatch, prob1, prob2, epoch=3, lambda_u=lambda_u)
        losses[lambda_u] = m.step(Batch(torch.zeros(B, 2), torch.zeros(B, dtype=torch.long), torch.arange(B), 0.1,
                                        0, 3), m.ctx.model).loss
        assert seen["lambda_u"] == official_linear_rampup(2 + 0 / (14 // B + 1), 1, lambda_u, 1) == lambda_u
    assert losses[25.0].item() != losses[0.0].item()


@pytest.mark.parametrize("penalty", [False, True])
def test_warmup_epoch_follows_the_official_loop(monkeypatch, penalty):
    """Warm-up (official ``warmup``): network 1 passes over all 22 samples in batches of 2B = 8 (8, 8, 6), then
    network 2; the loss is cross-entropy plus, for the asym configuration, NegEntropy; the idle network stays
    put."""
    m, x, y, net1, net2, log, opt = epoch_setup(monkeypatch, torch.ones(N), torch.ones(N), epoch=1,
                                                penalty=penalty)
    assert m.epoch_steps(1) == 2 * math.ceil(N / (2 * B)) == 6
    assert m.epoch_log() == {}  # no division in the warm-up
    seen = {"net1": [], "net2": []}
    for step in range(6):
        trainee, idle = (net1, net2) if step < 3 else (net2, net1)
        before_idle = params(idle)
        log.clear()
        loss = m.step(Batch(torch.zeros(B, 2), y[:B], torch.arange(B), 0.1, step, 1), net1).loss
        assert len(log) == 1 and log[0][:2] == (trainee.name, True)
        ids = torch.tensor(log[0][2])
        seen[trainee.name].append(ids.tolist())
        ref = official_warmup_loss(trainee.lin(x[ids]), y[ids], "asym" if penalty else "sym")
        assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
        harness_update(opt, loss)
        assert all(torch.equal(a, b) for a, b in zip(before_idle, params(idle), strict=True))
    for name in ("net1", "net2"):
        assert [len(s) for s in seen[name]] == [8, 8, 6]
        assert sorted(i for s in seen[name] for i in s) == list(range(N))
    assert seen["net1"] != seen["net2"]  # each pass shuffles anew


def test_neg_entropy_is_the_official_penalty():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-3.0, 4.0, 0.0]])
    assert dm.neg_entropy(logits).item() == pytest.approx(official_neg_entropy(logits).item(), rel=1e-6)
    assert dm.neg_entropy(logits[1:2]).item() == pytest.approx(-math.log(3), rel=1e-6)


def test_mixmatch_loss_equals_official_on_fixed_tensors():
    """The pure loss on fixed inputs, weights, l and permutation, against the official ``train`` body."""
    torch.manual_seed(5)
    net, peer = nn.Linear(2, C), nn.Linear(2, C)
    x1, x2, u1, u2 = torch.randn(4, 2), torch.randn(4, 2), torch.randn(3, 2), torch.randn(3, 2)
    yb, w = torch.tensor([0, 2, 1, 1]), torch.tensor([0.9, 0.6, 0.75, 0.99])
    perm = torch.randperm(14)
    ours = dm.mixmatch_loss(net, peer, x1, x2, u1, u2, yb, w, lam=0.7, perm=perm, temperature=0.5, lambda_u=12.5)
    ref = official_train_loss(net, peer, x1, x2, yb, w, u1, u2, l=0.7, idx=perm, epoch=10, batch_idx=4,
                              num_iter=8, warm_up=10, lambda_u=25.0, rampup_length=1)  # ramp 0.5 -> 12.5
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# 3. The configuration per noise family (paper, Appendix B; official --noise_mode sym / asym)


@pytest.mark.parametrize(("noise", "lambda_u", "penalty"), [
    ("sym40", 25.0, False), ("sym80", 25.0, False), ("uniform50", 25.0, False), ("clean", 25.0, False),
    ("pairflip45", 0.0, True), ("asym40", 0.0, True), ("flipback30", 0.0, True), ("background20", 0.0, True),
    ("idn40", 0.0, True),
])
def test_family_defaults(noise, lambda_u, penalty):
    cfg = canonical_config(RunConfig(method="dividemix", noise=noise, dataset="synthetic"))
    options = create_method("dividemix", **cfg.method_options).options()
    assert options["lambda_u"] == lambda_u and options["penalty"] is penalty


def test_family_defaults_human_and_explicit_options_win():
    assert dm.DivideMix.family_defaults["human"] == {"penalty": True, "lambda_u": 0.0}
    cfg = canonical_config(RunConfig(method="dividemix", noise="pairflip45", dataset="synthetic",
                                     method_options={"lambda_u": 50}))
    assert cfg.method_options["lambda_u"] == 50.0 and cfg.method_options["penalty"] is True
    a = canonical_config(RunConfig(method="dividemix", noise="sym40", dataset="synthetic"))
    b = canonical_config(RunConfig(method="dividemix", noise="sym80", dataset="synthetic"))
    assert a.method_options == b.method_options  # per family, never per rate


# ---------------------------------------------------------------------------------------------------------------
# 4. Through the harness: the epoch lengths of the official loop


def test_harness_runs_the_official_epoch_lengths(monkeypatch):
    made, steps = [], {}
    real = harness.create_method

    def capture(name, **kw):
        m = real(name, **kw)
        inner = m.step

        def counting(batch, model):
            steps[batch.epoch] = steps.get(batch.epoch, 0) + 1
            return inner(batch, model)

        m.step = counting
        made.append(m)
        return m

    monkeypatch.setattr(harness, "create_method", capture)
    record = train(RunConfig(method="dividemix", dataset="synthetic", noise="sym40", epochs=2, meta_size=40,
                             batch_size=64, dataset_options={"n_train": 400, "n_test": 100}), device="cpu")
    assert record["status"] == "ok"
    n = record["sizes"]["train"]  # 360
    assert steps[1] == 2 * math.ceil(n / 128)  # warm-up: each network one pass in batches of 2B
    for h in record["history"][1:]:  # co-divide: ceil(|L| / B) steps per network (no trailing single here)
        n1, n2 = round(h["labelled_share_net1"] * n), round(h["labelled_share_net2"] * n)
        assert steps[h["epoch"]] == dm.batch_count(n2, 64) + dm.batch_count(n1, 64)
        assert 0 < h["labelled_share"] < 1
