"""``gce-trunc``, the truncated Lq loss with pruning (Zhang & Sabuncu 2018, Section 3.3): the loss and the pruning
step against a reference that follows AlanChou/Truncated-Loss (``TruncatedLoss.py``) step by step, the schedule
of its ``main.py`` and its scaling, and a run whose weights and pruned share are recorded."""

from __future__ import annotations

import pytest
import torch

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.methods import Batch, create_method
from nlbench.methods.gce import prune_epochs


def reference_forward(logits, targets, weight, q, k):
    """``TruncatedLoss.forward``: ``p = softmax``, ``Yg = p[y]``, ``loss = ((1 - Yg^q) / q) * w - ((1 - k^q) / q) * w``,
    then ``mean``."""
    p = torch.softmax(logits.double(), dim=1)
    yg = torch.gather(p, 1, targets.unsqueeze(1))
    loss = ((1 - yg ** q) / q) * weight - ((1 - k ** q) / q) * weight
    return loss.mean()


def reference_update_weight(logits, targets, q, k):
    """``TruncatedLoss.update_weight``: ``Lq = (1 - Yg^q) / q``, ``Lqk = (1 - k^q) / q`` repeated, weight =
    ``Lqk > Lq``."""
    p = torch.softmax(logits.double(), dim=1)
    yg = torch.gather(p, 1, targets.unsqueeze(1))
    lq = (1 - yg ** q) / q
    lqk = torch.full_like(lq, (1 - k ** q) / q)
    return torch.gt(lqk, lq).double().squeeze(1)


class Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.z = torch.nn.Parameter(logits.float().clone())

    def forward(self, x):
        return self.z[: len(x)]


def test_loss_and_pruning_follow_the_reference():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 5, generator=g) * 2
    y = torch.randint(0, 5, (12,), generator=g)
    weight = reference_update_weight(logits, y, 0.7, 0.5)
    assert 0 < weight.sum() < 12  # the case keeps some samples and prunes others

    method = create_method("gce-trunc")

    class Ctx:
        num_train, num_classes, device, epochs = 12, 5, torch.device("cpu"), 30
        model = torch.nn.Linear(1, 1)
        meta_y = val_y = torch.zeros(0, dtype=torch.long)
        train_y = y

        @staticmethod
        def predict(model, x=None):
            return logits

    method.setup(Ctx)
    assert method.prune_at == prune_epochs(30)
    method.on_epoch_start(method.prune_at[0], None)  # prunes with the current model (no validation split)
    torch.testing.assert_close(method.weights.double(), weight)
    assert method.epoch_log()["pruned_share"] == pytest.approx(1 - weight.mean().item())

    model = Fixed(logits)
    out = method.step(Batch(torch.zeros(12, 1), y, torch.arange(12), 0.1, 0, 11), model)
    expected = reference_forward(logits.double().requires_grad_(), y, weight.unsqueeze(1), 0.7, 0.5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out.weights, weight.float())
    out.loss.backward()
    pruned = weight == 0
    assert model.z.grad[pruned].abs().max() == 0 and model.z.grad[~pruned].abs().max() > 0


def test_schedule_is_the_reference_scaled():
    # main.py: prune when (epoch + 1) >= start_prune and (epoch + 1) % 10 == 0, epoch 0-based, 120 epochs
    reference = [e + 1 for e in range(120) if e + 1 >= 40 and (e + 1) % 10 == 0]
    assert prune_epochs(120) == reference == [40, 50, 60, 70, 80, 90, 100, 110, 120]
    assert prune_epochs(30) == [10, 13, 15, 18, 20, 23, 25, 28, 30]  # 40/120, 50/120, ... of 30, half up
    assert prune_epochs(3) == [2, 3]
    assert prune_epochs(1) == []


def test_run_records_weights_and_pruned_share(tmp_path):
    cfg = RunConfig(method="gce-trunc", noise="sym40", dataset="synthetic", epochs=3, lr=0.2, meta_size=0,
                    val_size=40, batch_size=32, dataset_options={"n_train": 400, "n_test": 50})
    record = train(cfg, device="cpu")
    hist = record["history"]
    assert hist[0]["pruned_share"] == 0.0  # nothing pruned before the first pruning (before epoch 2)
    assert all(0 < h["pruned_share"] < 1 for h in hist[1:])
    assert all("w_auroc" in h for h in hist) and hist[-1]["w_auroc"] > 0.7  # the pruning finds the noisy labels
    assert record["method_options"] == {"q": 0.7, "k": 0.5}


def test_prunes_with_the_weights_of_the_best_validation_epoch():
    """With a validation split, the pruning model is the epoch with the best noisy-validation accuracy so far,
    not the current one."""
    y = torch.tensor([0, 1, 2, 0])
    model = torch.nn.Linear(1, 3, bias=False)
    accs = iter([0.6, 0.4, 0.5])  # epoch 1 is the best
    judged = []
    scale = torch.tensor([[1.0], [2.0], [3.0], [4.0]])

    class Ctx:
        num_train, num_classes, device, epochs = 4, 3, torch.device("cpu"), 30
        val_y = torch.zeros(5, dtype=torch.long)
        train_y = y

        @staticmethod
        def val_accuracy(m):
            return next(accs)

        @staticmethod
        def predict(m, x=None):
            judged.append(m.weight.detach().clone())
            return m.weight.detach().T.expand(4, 3) * scale

    Ctx.model = model
    method = create_method("gce-trunc")
    method.setup(Ctx)
    states = []
    for epoch, w in enumerate(([[1.0], [0.0], [0.0]], [[0.0], [5.0], [0.0]], [[0.0], [0.0], [5.0]]), start=1):
        with torch.no_grad():
            model.weight.copy_(torch.tensor(w))
        states.append(model.weight.detach().clone())
        method.on_epoch_end(epoch, model)
    method.on_epoch_start(method.prune_at[0], model)
    torch.testing.assert_close(judged[-1], states[0])  # epoch 1's weights judged, not epoch 3's
    from nlbench.methods.gce import prune_weights

    torch.testing.assert_close(method.weights, prune_weights(states[0].T.expand(4, 3) * scale, y, 0.7, 0.5))
