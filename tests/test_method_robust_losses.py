"""The robust losses ``sce``, ``bootstrap`` and ``ls``: loss values and gradients on fixed logits, computed by hand,
and the validation of their options."""

from __future__ import annotations

import math

import pytest
import torch

from nlbench.errors import NLBenchError
from nlbench.methods import Batch, create_method

LOG2 = math.log(2)
LOG4 = math.log(4)
# softmax of log([4, 2, 1, 1]) is [1/2, 1/4, 1/8, 1/8]
P = [0.5, 0.25, 0.125, 0.125]
SKEWED = [math.log(4), math.log(2), 0.0, 0.0]


class FixedLogits(torch.nn.Module):
    """Returns the same logits (a leaf with a gradient) for any input."""

    def __init__(self, rows):
        super().__init__()
        self.z = torch.nn.Parameter(torch.tensor(rows, dtype=torch.float32))

    def forward(self, x):
        return self.z


def run(name, rows, labels, **opts):
    """The method's batch loss on fixed logits, and the logits' gradient after backward."""
    model = FixedLogits(rows)
    y = torch.tensor(labels)
    out = create_method(name, **opts).step(Batch(torch.zeros(len(y), 2), y, torch.arange(len(y)), 0.1, 0, 1), model)
    assert out.weights is None and out.loss.dtype == torch.float32
    out.loss.backward()
    return out.loss.item(), model.z.grad


# --- sce ---

def test_sce_uniform_logits():
    """p_k = 1/4: CE = log 4, RCE = -A * (1 - 1/4) = 4 * 3/4 = 3 with the paper's A = -4."""
    loss, _ = run("sce", [[0.0] * 4] * 3, [0, 1, 3], A=-4.0)
    assert loss == pytest.approx(0.1 * LOG4 + 1.0 * 3.0, rel=1e-6)
    loss, _ = run("sce", [[0.0] * 4] * 3, [0, 1, 3], alpha=2.0, beta=0.5, A=-9.0)
    assert loss == pytest.approx(2.0 * LOG4 + 0.5 * 9.0 * 0.75, rel=1e-6)


def test_sce_skewed_logits_value_and_gradient():
    """p = [1/2, 1/4, 1/8, 1/8]; y = 0: CE = log 2, RCE = 4 * 1/2; y = 1: CE = log 4, RCE = 4 * 3/4."""
    loss, grad = run("sce", [SKEWED, SKEWED], [0, 1], A=-4.0)
    assert loss == pytest.approx(((0.1 * LOG2 + 2.0) + (0.1 * LOG4 + 3.0)) / 2, rel=1e-6)
    # d/dz of alpha*CE is alpha*(p - e_y); d/dz of -A*(1 - p_y) is A * p_y * (e_y - p); halved by the mean
    for i, y in enumerate([0, 1]):
        e = [float(k == y) for k in range(4)]
        expected = [(0.1 * (P[k] - e[k]) + (-4.0) * P[y] * (e[k] - P[k])) / 2 for k in range(4)]
        assert grad[i].tolist() == pytest.approx(expected, abs=1e-6)


def test_sce_rce_is_bounded_where_ce_is_not():
    """A confidently wrong sample: CE ~ 30, RCE -> -A = 4 (the robustness the paper is after)."""
    loss, _ = run("sce", [[30.0, 0.0, 0.0]], [1], alpha=0.0, A=-4.0)
    assert loss == pytest.approx(4.0, rel=1e-6)
    loss, _ = run("sce", [[30.0, 0.0, 0.0]], [1], beta=0.0, alpha=1.0)
    assert loss == pytest.approx(30.0 + math.log(1 + 2 * math.exp(-30)), rel=1e-6)


def official_sce(logits: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The loss of the official Keras code, step by step (YisenWang/symmetric_cross_entropy_for_noisy_labels,
    ``loss.py``, ``symmetric_cross_entropy``): ``y_pred`` is the softmax; CE takes ``y_pred`` clipped to
    [1e-7, 1]; RCE takes the one-hot ``y_true`` clipped to [1e-4, 1] and the unclipped ``y_pred``; each term is
    the batch mean of ``-sum(a * log(b))``."""
    y_pred = torch.softmax(logits.double(), dim=1)
    y_true = torch.nn.functional.one_hot(labels, logits.shape[1]).double()
    ce = -(y_true * torch.log(y_pred.clamp(1e-7, 1.0))).sum(-1).mean()
    rce = -(y_pred * torch.log(y_true.clamp(1e-4, 1.0))).sum(-1).mean()
    return alpha * ce + beta * rce


def test_sce_default_matches_the_official_code():
    """The default A = ln(1e-4) gives the official loss and gradient (where p_y >= 1e-7, so CE is unclipped);
    the paper's A = -4 gives an RCE term 0.43 times the official one."""
    g = torch.Generator().manual_seed(0)
    rows = (torch.randn(16, 10, generator=g) * 3).tolist()
    labels = torch.randint(0, 10, (16,), generator=g)
    z = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    expected = official_sce(z, labels, 0.1, 1.0)
    expected.backward()
    loss, grad = run("sce", rows, labels.tolist())
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), z.grad, rtol=1e-4, atol=1e-6)
    rce_official = official_sce(z.detach(), labels, 0.0, 1.0).item()
    rce_paper, _ = run("sce", rows, labels.tolist(), alpha=0.0, A=-4.0)
    assert rce_paper / rce_official == pytest.approx(4 / math.log(1e4), rel=1e-5)  # 0.434


# --- bootstrap ---

def test_bootstrap_uniform_logits():
    """Uniform p: CE = H(p) = CE(argmax) = log 4, so every mode and beta gives log 4."""
    for opts in ({}, {"mode": "hard"}, {"mode": "soft", "beta": 0.3}, {"mode": "hard", "beta": 0.0}):
        loss, _ = run("bootstrap", [[0.0] * 4] * 2, [1, 2], **opts)
        assert loss == pytest.approx(LOG4, rel=1e-6)


def test_bootstrap_soft_value_and_gradient():
    """y = 1, p = [1/2, 1/4, 1/8, 1/8]: CE = 2 log 2, H(p) = (1/2 + 1/2 + 3/4) log 2 = 1.75 log 2."""
    loss, grad = run("bootstrap", [SKEWED], [1])
    assert loss == pytest.approx(0.95 * 2 * LOG2 + 0.05 * 1.75 * LOG2, rel=1e-6)
    # the gradient flows through p in the target: d H / d z_k = -p_k (log p_k + H); a detached p would give
    # exactly 0.95 * (p - e_y), checked to differ below
    H = 1.75 * LOG2
    e = [0.0, 1.0, 0.0, 0.0]
    expected = [0.95 * (P[k] - e[k]) + 0.05 * (-P[k] * (math.log(P[k]) + H)) for k in range(4)]
    assert grad[0].tolist() == pytest.approx(expected, abs=1e-6)
    detached = [0.95 * (P[k] - e[k]) for k in range(4)]
    assert max(abs(a - b) for a, b in zip(grad[0].tolist(), detached, strict=True)) > 5e-3


def test_bootstrap_hard_value_and_gradient():
    """y = 1, argmax p = 0: L = 0.8 * log 4 + 0.2 * log 2; gradient p - (0.8 e_1 + 0.2 e_0)."""
    loss, grad = run("bootstrap", [SKEWED], [1], mode="hard")
    assert loss == pytest.approx(0.8 * LOG4 + 0.2 * LOG2, rel=1e-6)
    assert grad[0].tolist() == pytest.approx([0.5 - 0.2, 0.25 - 0.8, 0.125, 0.125], abs=1e-6)


def test_bootstrap_hard_and_soft_differ_and_agree_where_they_should():
    soft, _ = run("bootstrap", [SKEWED], [1], mode="soft", beta=0.8)
    hard, _ = run("bootstrap", [SKEWED], [1], mode="hard", beta=0.8)
    assert soft == pytest.approx(0.8 * 2 * LOG2 + 0.2 * 1.75 * LOG2, rel=1e-6)
    assert hard == pytest.approx(0.8 * 2 * LOG2 + 0.2 * LOG2, rel=1e-6)
    assert soft > hard
    # the label is the argmax: hard bootstrapping is plain CE, soft still adds the entropy
    hard0, _ = run("bootstrap", [SKEWED], [0], mode="hard")
    soft0, _ = run("bootstrap", [SKEWED], [0], mode="soft")
    assert hard0 == pytest.approx(LOG2, rel=1e-6)
    assert soft0 == pytest.approx(0.95 * LOG2 + 0.05 * 1.75 * LOG2, rel=1e-6)
    # beta = 1 is plain cross-entropy in both modes
    for mode in ("soft", "hard"):
        loss, _ = run("bootstrap", [SKEWED], [1], mode=mode, beta=1.0)
        assert loss == pytest.approx(2 * LOG2, rel=1e-6)


def test_bootstrap_beta_defaults_per_mode():
    assert create_method("bootstrap").options() == {"mode": "soft", "beta": 0.95}
    assert create_method("bootstrap", mode="hard").options() == {"mode": "hard", "beta": 0.8}
    assert create_method("bootstrap", mode="hard", beta=0.6).options() == {"mode": "hard", "beta": 0.6}
    assert create_method("bootstrap", beta="0.5").options() == {"mode": "soft", "beta": 0.5}  # CLI strings


# --- ls ---

def test_ls_uniform_logits():
    """Any target that sums to 1 against uniform p gives log 4."""
    for eps in (0.1, 0.0, 0.5):
        loss, _ = run("ls", [[0.0] * 4] * 2, [0, 3], epsilon=eps)
        assert loss == pytest.approx(LOG4, rel=1e-6)


def test_ls_skewed_logits_value_and_gradient():
    """y = 1, eps = 0.1, C = 4: target [0.025, 0.925, 0.025, 0.025]."""
    loss, grad = run("ls", [SKEWED], [1])
    t = [0.025, 0.925, 0.025, 0.025]
    assert loss == pytest.approx(-sum(t[k] * math.log(P[k]) for k in range(4)), rel=1e-6)
    assert loss == pytest.approx(0.925 * LOG4 + 0.025 * (LOG2 + 2 * math.log(8)), rel=1e-6)
    assert grad[0].tolist() == pytest.approx([P[k] - t[k] for k in range(4)], abs=1e-6)
    loss0, _ = run("ls", [SKEWED], [1], epsilon=0.0)
    assert loss0 == pytest.approx(LOG4, rel=1e-6)


# --- options ---

def test_default_options_recorded():
    assert create_method("sce").options() == {"alpha": 0.1, "beta": 1.0, "A": math.log(1e-4)}
    assert create_method("ls").options() == {"epsilon": 0.1}


@pytest.mark.parametrize(("name", "opts"), [
    ("sce", {"alpha": -0.1}),
    ("sce", {"beta": 1000.0}),
    ("sce", {"A": 0.0}),         # log 0 must be negative
    ("sce", {"A": 1.0}),
    ("sce", {"alpha": float("nan")}),
    ("sce", {"q": 0.7}),         # unknown option
    ("bootstrap", {"mode": "medium"}),
    ("bootstrap", {"beta": 1.5}),
    ("bootstrap", {"beta": -0.1}),
    ("bootstrap", {"beta": "high"}),
    ("ls", {"epsilon": 1.0}),
    ("ls", {"epsilon": -0.1}),
    ("ls", {"eps": 0.1}),
])
def test_bad_options_are_refused(name, opts):
    with pytest.raises(NLBenchError):
        create_method(name, **opts)
