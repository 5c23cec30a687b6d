"""Loss correction (``forward``, ``glc``): the estimators and the corrected loss on hand cases and against references
that follow the official code step by step, the two-stage protocol inside the harness (stage-1 selection, the
estimate, stage 2 from the initial weights with a fresh or kept optimiser and a restarted schedule, resume
across the boundary), and the one-network variant (``two_stage=false``)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nlbench.benchmark.harness as harness
import nlbench.methods.forward as forward_mod
import nlbench.methods.glc as glc_mod
from nlbench.benchmark import checkpoint as ckpt
from nlbench.benchmark.records import validate_record
from nlbench.errors import NLBenchError
from nlbench.methods import Batch, MethodContext, create_method
from nlbench.methods.loss_correction import (
    anchor_transition,
    class_mean_transition,
    forward_corrected_loss,
    keras_crossentropy,
    rank_anchor_transition,
    resolve_warmup,
)
from tests.test_checkpoint import Stop, interrupt_after, strip
from tests.test_methods_all import tiny_config

# ----------------------------------------------------------------------------------- official references


def official_noise_estimator(eta_corr: np.ndarray, filter_outlier: bool = True, percentile: float = 97) -> np.ndarray:
    """giorgiop/loss-correction ``models.py``: ``NoiseEstimator(classifier, alpha=0.0, filter_outlier=...)``,
    ``.fit(X_train).predict()`` as ``experiment.py`` calls it (``row_normalize=True``, ``cliptozero=False``),
    line by line on the predictions ``eta_corr`` (the 97 of ``np.percentile`` is ``percentile``)."""
    eta_corr = eta_corr.copy()  # fit() writes into the classifier's predictions through the view robust_eta
    c = eta_corr.shape[1]
    T = np.empty((c, c))
    for i in np.arange(c):
        if not filter_outlier:
            idx_best = np.argmax(eta_corr[:, i])
        else:
            eta_thresh = np.percentile(eta_corr[:, i], percentile, method="higher")
            robust_eta = eta_corr[:, i]
            robust_eta[robust_eta >= eta_thresh] = 0.0
            idx_best = np.argmax(robust_eta)
        for j in np.arange(c):
            T[i, j] = eta_corr[idx_best, j]
    # predict(): cliptozero is False, row_normalize is True, alpha is 0
    row_sums = T.sum(axis=1)
    T /= row_sums[:, np.newaxis]
    return T


def official_crossentropy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """giorgiop/loss-correction ``loss.py`` ``crossentropy`` (Keras' ``K.epsilon()`` is 1e-7), per sample."""
    y_pred = y_pred / np.sum(y_pred, axis=-1, keepdims=True)
    y_pred = np.clip(y_pred, 1e-7, 1.0 - 1e-7)
    return -np.sum(y_true * np.log(y_pred), axis=-1)


def official_checkpoint_epoch(val_losses: list[float]) -> int:
    """``KerasModel.fit_model`` in ``models.py``: ``ModelCheckpoint(monitor='val_loss', save_best_only=True)``
    (Keras: ``np.less`` against a best that starts at ``np.inf``), then ``load_model`` of the saved file: the
    epoch (from 1) whose weights are loaded."""
    best, saved = np.inf, None
    for epoch, current in enumerate(val_losses, start=1):
        if np.less(current, best):
            best, saved = current, epoch
    return saved


def official_c_hat(probs: np.ndarray, gold_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """mmazeika/glc ``CIFAR/train_ours.py`` ``get_C_hat_transpose`` on the gold softmax ``probs``, transposed
    back to ``C_hat``."""
    probs = np.array(probs, dtype=np.float32)
    C_hat = np.zeros((num_classes, num_classes))
    for label in range(num_classes):
        indices = np.arange(len(gold_labels))[np.isclose(np.array(gold_labels), label)]
        C_hat[label] = np.mean(probs[indices], axis=0, keepdims=True)
    return C_hat.T.astype(np.float32).T


# --------------------------------------------------------------------------------------------- estimators

# 5 samples, 3 classes. Ascending order of each column (sample indices):
#   class 0: 0.1 (3), 0.2 (2), 0.3 (4), 0.6 (1), 0.9 (0)
#   class 1: 0.05 (0), 0.1 (3), 0.2 (4), 0.3 (1), 0.7 (2)
#   class 2: 0.05 (0), 0.1 (1), 0.1 (2), 0.5 (4), 0.8 (3)
PROBS = torch.tensor([[0.90, 0.05, 0.05],
                      [0.60, 0.30, 0.10],
                      [0.20, 0.70, 0.10],
                      [0.10, 0.10, 0.80],
                      [0.30, 0.20, 0.50]])


@pytest.mark.parametrize(("percentile", "expected"), [
    # no filter: the argmax of every column (samples 0, 2, 3)
    (100, [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]),
    # threshold at rank ceil(0.97 * 4) = 4, the max: the largest value strictly below it (samples 1, 1, 4)
    (97, [[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.3, 0.2, 0.5]]),
    # rank 3: thresholds 0.6, 0.3, 0.5; anchors 4 (0.3), 4 (0.2) and 1 (0.1, first of the tie 0.1 (1), 0.1 (2)),
    # whose entries in columns 0 (0.6) and 1 (0.3) were zeroed before: its row is [0, 0, 0.1], normalised
    (75, [[0.3, 0.2, 0.5], [0.3, 0.2, 0.5], [0.0, 0.0, 1.0]]),
    # rank 2: thresholds 0.3, 0.2, 0.1; anchors 2 (0.2), 3 (0.1), 0 (0.05: every 0.1 is zeroed), whose column-0
    # entry 0.9 was zeroed: [0, 0.05, 0.05], normalised
    (50, [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.0, 0.5, 0.5]]),
])
def test_anchor_transition_follows_the_official_filter(percentile, expected):
    T = anchor_transition(PROBS, percentile)
    assert T.dtype == torch.float32 and T.shape == (3, 3)
    assert torch.allclose(T, torch.tensor(expected), atol=1e-6)
    ref = official_noise_estimator(PROBS.numpy(), filter_outlier=percentile < 100, percentile=percentile)
    assert np.allclose(T.numpy(), ref, atol=1e-6)


def test_anchor_transition_zeroes_in_place_as_the_official_view():
    """The official ``robust_eta`` is a view of the predictions: zeroing class j's top entries shows in the rows
    of later anchors. Hand case (percentile 50, rank 2): class 0's threshold is 0.2 (samples 2, 3, 4 zeroed in
    column 0), anchor 1 (0.1); class 1's threshold 0.5 (samples 3, 4, 0 zeroed in column 1), anchor 2 (0.2),
    whose column-0 entry is already 0; class 2's threshold 0.2 (samples 3, 2, 1), the tie 0.05 (0), 0.05 (4)
    goes to sample 0, whose column-1 entry 0.9 is already 0."""
    probs = torch.tensor([[0.05, 0.90, 0.05],
                          [0.10, 0.10, 0.80],
                          [0.20, 0.20, 0.60],
                          [0.30, 0.50, 0.20],
                          [0.40, 0.55, 0.05]])
    T = anchor_transition(probs, 50)
    expected = torch.tensor([[0.1, 0.1, 0.8], [0.0, 0.25, 0.75], [0.5, 0.0, 0.5]])
    assert torch.allclose(T, expected, atol=1e-6)
    assert np.allclose(T.numpy(), official_noise_estimator(probs.numpy(), percentile=50), atol=1e-6)
    assert not torch.allclose(T, rank_anchor_transition(probs, 50), atol=1e-3)  # the old rule differs here


@pytest.mark.parametrize(("n", "c", "percentile", "seed"), [(257, 5, 97, 0), (101, 4, 97, 1), (1000, 10, 97, 2),
                                                           (64, 3, 90, 3), (300, 10, 100, 4)])
def test_anchor_transition_matches_the_official_estimator_on_softmax_outputs(n, c, percentile, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, c, generator=g)
    logits[:, 1] += 2 * logits[:, 0]  # correlated classes, so anchors of one class are confident in another
    probs = logits.softmax(dim=1)
    ref = official_noise_estimator(probs.numpy(), filter_outlier=percentile < 100, percentile=percentile)
    assert np.allclose(anchor_transition(probs, percentile).numpy(), ref, atol=1e-6)


def test_rank_anchor_transition_keeps_the_one_network_rule():
    """The one-network variant's rule: the sample at the percentile's rank, unnormalised."""
    for percentile, rows in [(100, [0, 2, 3]), (97, [0, 2, 3]), (75, [1, 1, 4]), (50, [4, 4, 2]), (0, [3, 0, 0])]:
        assert torch.equal(rank_anchor_transition(PROBS, percentile), PROBS[rows])
    perm = torch.randperm(101, generator=torch.Generator().manual_seed(0))
    p0 = perm.float() / 100
    probs = torch.stack([p0, 1 - p0], dim=1)
    assert rank_anchor_transition(probs, 97)[0].tolist() == pytest.approx([0.97, 0.03])
    assert anchor_transition(probs, 97)[0].tolist() == pytest.approx([0.96, 0.04])  # official: one rank lower


def test_class_mean_transition():
    probs = torch.tensor([[0.8, 0.2, 0.0],
                          [0.6, 0.4, 0.0],
                          [0.1, 0.5, 0.4],
                          [0.3, 0.3, 0.4],
                          [0.2, 0.8, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    expected = torch.tensor([[0.7, 0.3, 0.0, 0.0],                  # mean of samples 0, 1
                             [0.2, 1.6 / 3, 0.8 / 3, 0.0],          # mean of samples 2, 3, 4
                             [0.0, 0.0, 1.0, 0.0],                  # no trusted sample: identity row
                             [0.0, 0.0, 0.0, 1.0]])
    # (the 4-class probs above are padded: column 3 is a class no sample is predicted as)
    C = class_mean_transition(F.pad(probs, (0, 1)), labels, 4)
    assert C.shape == (4, 4) and C.dtype == torch.float32
    assert torch.allclose(C, expected, atol=1e-6)
    full = F.pad(probs, (0, 1))[:4]  # classes 0 and 1 present: the official code agrees on their rows
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the official mean of no sample is NaN, with a warning
        ref = official_c_hat(full.numpy(), np.array([0, 0, 1, 1]), 4)
    assert np.isnan(ref[2:]).all()
    assert np.allclose(class_mean_transition(full, labels[:4], 4).numpy()[:2], ref[:2], atol=1e-6)
    with pytest.raises(ValueError):
        class_mean_transition(probs, labels, 4)


def test_keras_crossentropy_clips_as_the_official_loss():
    logits = torch.tensor([[0.0, math.log(3.0)], [40.0, -40.0], [2.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    ref = official_crossentropy(np.eye(2)[y.numpy()], logits.softmax(1).numpy()).mean()
    assert keras_crossentropy(logits, y) == pytest.approx(float(ref), rel=1e-6)
    assert official_crossentropy(np.eye(2)[[1]], logits[1:2].softmax(1).numpy())[0] == pytest.approx(-math.log(1e-7))
    assert math.isnan(keras_crossentropy(logits[:0], y[:0]))


def test_forward_corrected_loss_identity_is_cross_entropy():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0], [10.0, -10.0, 0.0]])
    y = torch.tensor([0, 2, 1])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(forward_corrected_loss(logits, y, torch.eye(3), reduction="none"), ce, rtol=1e-6)
    assert forward_corrected_loss(logits, y, torch.eye(3)).item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_forward_corrected_loss_hand_value():
    """softmax([0, ln 3]) = [1/4, 3/4]; with T = [[.8, .2], [.3, .7]], p @ T = [.425, .575]."""
    logits = torch.tensor([[0.0, math.log(3.0)]] * 2, requires_grad=True)
    T = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    losses = forward_corrected_loss(logits, torch.tensor([0, 1]), T, reduction="none")
    assert losses.tolist() == pytest.approx([-math.log(0.425), -math.log(0.575)], rel=1e-6)
    # d/dz_k of -log(sum_i p_i T_iy) = p_k - p_k T_ky / (p @ T)_y; for y = 0, k = 0: 1/4 - (1/4 * .8) / .425
    losses.sum().backward()
    assert logits.grad[0, 0].item() == pytest.approx(0.25 - 0.2 / 0.425, rel=1e-5)


def test_forward_corrected_loss_is_finite_for_zero_columns_and_bf16():
    logits = torch.tensor([[50.0, -50.0], [0.0, 0.0]], requires_grad=True)
    T = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # nobody is ever labelled 1
    loss = forward_corrected_loss(logits, torch.tensor([1, 1]), T)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
    out = forward_corrected_loss(logits.detach().bfloat16(), torch.tensor([0, 0]), torch.eye(2))
    assert out.dtype == torch.float32


def test_resolve_warmup():
    assert [resolve_warmup(None, e) for e in (1, 2, 3, 10, 11, 30, 120)] == [0, 1, 1, 1, 2, 3, 12]
    assert resolve_warmup(5, 2) == 1 and resolve_warmup(5, 30) == 5


def test_options_validation_and_records():
    assert create_method("forward").options() == {"two_stage": True, "warmup": None, "reinit": False,
                                                  "percentile": 97.0}
    assert create_method("glc", two_stage="false", warmup="4").options() == {"two_stage": False, "warmup": 4,
                                                                             "reinit": False}
    for name, bad in [("forward", {"percentile": 101}), ("forward", {"percentile": -1}), ("forward", {"warmup": 0}),
                      ("glc", {"warmup": 1.5}), ("glc", {"percentile": 97}), ("glc", {"reinit": "maybe"}),
                      ("forward", {"warmup": 2}), ("glc", {"reinit": True})]:  # the last two need two_stage=false
        with pytest.raises(NLBenchError):
            create_method(name, **bad)


# ------------------------------------------------------------------------------------- inside the harness


def _spy_run(monkeypatch, name, cfg_kw=None, **options):
    """Train the tiny config; return the record, the method instance, the epochs of every corrected-loss call,
    the model's state at the end of every epoch and the optimisers the harness made with their state sizes at
    every step."""
    made, calls, states, optimisers = [], [], {}, []
    real_create, real_end = harness.create_method, (forward_mod.Forward if name == "forward" else glc_mod.GLC)
    real_on_epoch_end = real_end.on_epoch_end

    def create(*a, **kw):
        made.append(real_create(*a, **kw))
        return made[-1]

    def spy(logits, targets, T, reduction="mean"):
        calls.append(len(targets))
        return forward_corrected_loss(logits, targets, T, reduction)

    def on_epoch_end(self, epoch, model):
        states[epoch] = copy.deepcopy(model.state_dict())
        real_on_epoch_end(self, epoch, model)

    class SGD(torch.optim.SGD):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.log = []
            optimisers.append(self)

        def step(self, *a, **kw):
            self.log.append(sum(len(s) for s in self.state.values()))
            return super().step(*a, **kw)

    monkeypatch.setattr(harness, "create_method", create)
    monkeypatch.setattr(real_end, "on_epoch_end", on_epoch_end)
    monkeypatch.setattr(harness.torch.optim, "SGD", SGD)
    if name == "glc":
        monkeypatch.setattr(glc_mod, "forward_corrected_loss", spy)
    monkeypatch.setattr("nlbench.methods.loss_correction.forward_corrected_loss", spy)
    record = harness.train(tiny_config(name, **(cfg_kw or {}), method_options=options), device="cpu")
    return record, made[0], calls, states, optimisers


def _eval_probs(model, state, x, prep=None):
    """Softmax of ``model`` with ``state`` in eval mode (the official ``predict_proba`` / ``net.eval()``)."""
    net = copy.deepcopy(model)
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        return net(x if prep is None else prep(x)).float().softmax(dim=1)


def test_forward_two_stage_follows_the_official_protocol(monkeypatch):
    """experiment.py run with crossentropy, then est_forward: the stage-1 epoch of the lowest clipped
    cross-entropy on the noisy validation split (ModelCheckpoint) gives T by NoiseEstimator over the pool and
    the validation split; stage 2 starts from the initial weights with a new optimiser and the schedule anew."""
    E = 3
    record, method, calls, states, optimisers = _spy_run(monkeypatch, "forward", {"epochs": E, "lr": 0.3})
    ctx = method.ctx
    assert record["status"] == "ok" and record["stages"] == 2 and validate_record(record) == []
    assert [(h["epoch"], h["stage"]) for h in record["history"]] == [(e, 1 + (e > E)) for e in range(1, 2 * E + 1)]
    # the reference selection: Keras' val_loss after every stage-1 epoch, ModelCheckpoint's rule
    val_onehot = np.eye(ctx.num_classes)[ctx.val_y.numpy()]
    losses = [official_crossentropy(val_onehot, _eval_probs(ctx.model, states[e], ctx.val_x, ctx.prep).numpy()).mean()
              for e in range(1, E + 1)]
    chosen = official_checkpoint_epoch(losses)
    assert method.estimator_epoch == chosen
    assert all(h["estimator_epoch"] == chosen for h in record["history"][E:])
    assert not any("estimator_epoch" in h for h in record["history"][:E])
    # the reference estimate: predict_proba on all of X_train (pool and validation split) of the loaded network
    eta = torch.cat([_eval_probs(ctx.model, states[chosen], ctx.train_x, ctx.prep),
                     _eval_probs(ctx.model, states[chosen], ctx.val_x, ctx.prep)])
    assert np.allclose(method.T.numpy(), official_noise_estimator(eta.numpy()), atol=1e-6)
    # stage 1 is cross-entropy, every step of stage 2 is corrected (5 steps of 64 a stage-2 epoch)
    assert calls == [64] * 5 * E
    # a new optimiser for stage 2, empty at its first step (momentum starts over)
    steps = 5 * E
    assert len(optimisers) == 2 and len(optimisers[0].log) == steps and len(optimisers[1].log) == steps
    assert optimisers[1].log[0] == 0 and optimisers[0].log[-1] > 0
    # the schedule restarts: stage 2's learning rates are stage 1's
    assert [h["lr"] for h in record["history"][E:]] == [h["lr"] for h in record["history"][:E]]
    # final summarises stage 2
    accs = [h["test_acc"] for h in record["history"][E:]]
    assert record["final"] == {"last_acc": accs[-1], "best_acc": max(accs), "best_epoch": accs.index(max(accs)) + 1,
                               "last5_acc": pytest.approx(sum(accs) / E), "epochs_done": E}


def test_stage_two_starts_from_the_initial_weights(monkeypatch):
    seen = {}
    real_setup, real_stage = forward_mod.Forward.setup, forward_mod.Forward.on_stage_start

    def setup(self, ctx):
        seen["init"] = copy.deepcopy(ctx.model.state_dict())
        real_setup(self, ctx)

    def on_stage_start(self, stage, model):
        seen["before"] = copy.deepcopy(model.state_dict())
        real_stage(self, stage, model)
        seen["after"] = copy.deepcopy(model.state_dict())

    monkeypatch.setattr(forward_mod.Forward, "setup", setup)
    monkeypatch.setattr(forward_mod.Forward, "on_stage_start", on_stage_start)
    record = harness.train(tiny_config("forward", val_size=0), device="cpu")
    assert record["status"] == "ok"

    def same(a, b):
        return all(torch.equal(seen[a][k], seen[b][k]) for k in seen[a])

    assert same("after", "init") and not same("before", "init")


def test_forward_without_validation_estimates_from_the_last_stage1_epoch(monkeypatch):
    E = 2
    record, method, _, states, _ = _spy_run(monkeypatch, "forward", {"epochs": E, "val_size": 0})
    ctx = method.ctx
    assert method.estimator_epoch == E and len(ctx.val_y) == 0
    eta = _eval_probs(ctx.model, states[E], ctx.train_x, ctx.prep)
    assert np.allclose(method.T.numpy(), official_noise_estimator(eta.numpy()), atol=1e-6)


def test_forward_selection_takes_the_first_lowest_validation_loss():
    """ModelCheckpoint's np.less: epochs of val loss 0.7, 0.5, 0.5, 0.6 keep epoch 2; a NaN loss is never kept."""
    method = create_method("forward", percentile=100)  # the argmax: every row is the one prediction

    class Fixed(torch.nn.Module):  # logits that give class 0 the probability p, set per epoch
        def __init__(self):
            super().__init__()
            self.z = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return self.z.expand(len(x), 2)

    model = Fixed()
    ctx = MethodContext(model=model, meta_x=torch.zeros(0, 1), meta_y=torch.zeros(0, dtype=torch.long),
                        num_train=4, num_classes=2, batch_size=2, device=torch.device("cpu"),
                        generator=torch.Generator(), prep=lambda x: x,
                        autocast=lambda: torch.autocast("cpu", enabled=False), train_x=torch.zeros(4, 1),
                        train_y=torch.zeros(4, dtype=torch.long), epochs=5, val_x=torch.zeros(3, 1),
                        val_y=torch.zeros(3, dtype=torch.long))
    method.setup(ctx)
    for epoch, loss in enumerate([0.7, 0.5, 0.5, float("nan"), 0.6], start=1):
        p = math.exp(-loss) if math.isfinite(loss) else float("nan")
        with torch.no_grad():
            model.z.copy_(torch.tensor([math.log(p), math.log(1 - p)]) if math.isfinite(p) else torch.full((2,), p))
        method.on_epoch_end(epoch, model)
    assert method._best_epoch == 2 and method._best_loss == pytest.approx(0.5, rel=1e-5)
    assert official_checkpoint_epoch([0.7, 0.5, 0.5, float("nan"), 0.6]) == 2
    method.on_stage_start(2, model)
    assert method.estimator_epoch == 2 and torch.equal(model.z, torch.zeros(2))  # back to the initial weights
    p2 = math.exp(-0.5)  # T comes from epoch 2's network, not the last one's (p = exp(-0.6))
    assert torch.allclose(method.T, torch.tensor([[p2, 1 - p2], [p2, 1 - p2]]), atol=1e-6)


def test_glc_two_stage_follows_the_official_protocol(monkeypatch):
    """CIFAR/train_ours.py: phase 1 to the end, C_hat from its last network on the gold set
    (get_C_hat_transpose), the initial weights reloaded into the same optimiser (momentum kept), the
    learning rate restarted, phase 2 on the union."""
    E = 2
    record, method, calls, states, optimisers = _spy_run(monkeypatch, "glc", {"epochs": E})
    ctx = method.ctx
    assert record["status"] == "ok" and record["stages"] == 2 and validate_record(record) == []
    assert method.estimator_epoch == E  # no selection: the official code has no validation split
    probs = _eval_probs(ctx.model, states[E], ctx.meta_x)  # meta_x is model-ready
    ref = official_c_hat(probs.numpy(), ctx.meta_y.numpy(), ctx.num_classes)
    assert np.allclose(method.T.numpy(), ref, atol=1e-6)
    assert calls == [64] * 5 * E  # stage 2's pool batches go through the corrected loss
    # one optimiser for both stages: stage 2's first step finds phase 1's momentum buffers
    assert len(optimisers) == 1 and len(optimisers[0].log) == 2 * 5 * E and optimisers[0].log[5 * E] > 0
    assert [h["lr"] for h in record["history"][E:]] == [h["lr"] for h in record["history"][:E]]


@pytest.mark.parametrize("name", ["forward", "glc"])
@pytest.mark.parametrize("stop_after", [2, 3])  # at the stage boundary, and inside stage 2
def test_resume_across_the_stage_boundary_is_bit_identical(name, stop_after, tmp_path, monkeypatch):
    cfg = tiny_config(name, epochs=2)
    whole = harness.train(cfg, device="cpu", results_dir=tmp_path / "whole", checkpoint_every=0)
    interrupt_after(monkeypatch, stop_after)
    with pytest.raises(Stop):
        harness.train(cfg, device="cpu", results_dir=tmp_path / "cut", checkpoint_every=0)
    monkeypatch.undo()
    resumed = harness.train(cfg, device="cpu", results_dir=tmp_path / "cut", checkpoint_every=0)
    assert resumed["resumed_from_epoch"] == stop_after + 1 and len(whole["history"]) == 4
    assert strip(resumed["history"]) == strip(whole["history"]) and resumed["final"] == whole["final"]
    assert not list(ckpt.checkpoints_dir(tmp_path / "cut").glob("*.pt"))


# ------------------------------------------------------------------- the one-network variant (two_stage=false)


@pytest.mark.parametrize("name", ["forward", "glc"])
def test_one_network_variant_switches_within_the_run(monkeypatch, name):
    record, method, calls, _, optimisers = _spy_run(monkeypatch, name, two_stage=False)
    assert record["status"] == "ok" and method.warmup_epochs == 1 and "stages" not in record
    assert [set(h) & {"stage", "estimator_epoch"} for h in record["history"]] == [set(), set()]
    # epoch 1 is cross-entropy; every step of epoch 2 (5 steps of 64: 320 pool samples) is corrected
    assert calls == [64, 64, 64, 64, 64] and len(optimisers) == 1
    T, c = method.T, method.ctx.num_classes
    assert c == 4 and T is not None and T.shape == (c, c) and torch.allclose(T.sum(1), torch.ones(c), atol=1e-5)
    assert (T >= 0).all()


def test_one_network_forward_keeps_the_rank_rule_on_the_pool(monkeypatch):
    record, method, _, states, _ = _spy_run(monkeypatch, "forward", two_stage=False)
    ctx = method.ctx
    probs = _eval_probs(ctx.model, states[1], ctx.train_x, ctx.prep)
    assert torch.allclose(method.T, rank_anchor_transition(probs, 97), atol=1e-6)


def test_glc_step_mixes_pool_and_trusted_by_union_share():
    """One corrected step by hand: a model with constant logits makes both parts known in closed form."""

    class Const(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.b = torch.nn.Parameter(torch.tensor([0.0, math.log(3.0)]))

        def forward(self, x):
            return self.b.expand(len(x), 2)

    for two_stage in (True, False):
        method = create_method("glc", two_stage=two_stage)
        meta_x, meta_y = torch.zeros(3, 4), torch.tensor([0, 0, 1])
        ctx = MethodContext(model=Const(), meta_x=meta_x, meta_y=meta_y, num_train=7, num_classes=2, batch_size=4,
                            device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                            prep=lambda x: x, autocast=lambda: torch.autocast("cpu", enabled=False), epochs=2)
        method.setup(ctx)
        if two_stage:
            method.on_epoch_end(2, ctx.model)
            method.on_stage_start(2, ctx.model)
        else:
            method.on_epoch_end(1, ctx.model)
        # every meta sample predicts [1/4, 3/4]: both rows of C_hat are that
        assert torch.allclose(method.T, torch.tensor([[0.25, 0.75], [0.25, 0.75]]))
        out = method.step(Batch(torch.zeros(2, 4), torch.tensor([0, 1]), torch.arange(2), 0.1, 0, 2), ctx.model)
        # pool: (p @ T) = [1/4, 3/4] for every sample, so the corrected losses are -ln(1/4), -ln(3/4);
        # trusted (all 3 meta samples, m = 3 < batch 4): CE of labels 0, 0, 1 = -ln(1/4), -ln(1/4), -ln(3/4)
        pool = (math.log(4) + math.log(4 / 3)) / 2
        trusted = (2 * math.log(4) + math.log(4 / 3)) / 3
        assert out.loss.item() == pytest.approx(7 / 10 * pool + 3 / 10 * trusted, rel=1e-6)


def test_glc_needs_a_meta_set():
    with pytest.raises(NLBenchError, match="meta"):
        harness.train(tiny_config("glc", meta_size=0), device="cpu")


def test_one_network_reinit_restores_the_initial_weights(monkeypatch):
    """With two_stage=false and reinit, the first corrected epoch starts from the model's initial weights, and
    the record of the warm-up epoch still evaluates the warmed-up network."""
    seen = {}
    real_start = forward_mod.Forward.on_epoch_start
    real_setup = forward_mod.Forward.setup

    def setup(self, ctx):
        seen["init"] = [p.detach().clone() for p in ctx.model.parameters()]
        real_setup(self, ctx)

    def on_epoch_start(self, epoch, model):
        seen[f"before{epoch}"] = [p.detach().clone() for p in model.parameters()]
        real_start(self, epoch, model)
        seen[f"after{epoch}"] = [p.detach().clone() for p in model.parameters()]

    monkeypatch.setattr(forward_mod.Forward, "setup", setup)
    monkeypatch.setattr(forward_mod.Forward, "on_epoch_start", on_epoch_start)
    record = harness.train(tiny_config("forward", method_options={"reinit": True, "two_stage": False}),
                           device="cpu")
    assert record["status"] == "ok" and record["method_options"]["reinit"] is True

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(seen[a], seen[b], strict=True))

    assert same("after1", "init") and same("after2", "init")  # epoch 1 starts from init; epoch 2 is reset to it
    assert not same("before2", "init")  # the warm-up trained it
