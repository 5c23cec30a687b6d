"""The method interface's hooks, as the harness drives them: epoch hooks, extra networks, the evaluated network,
the meta set withheld from methods that do not declare it, and the nominal noise rate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nlbench.benchmark.harness import nominal_rate, train
from nlbench.errors import NLBenchError
from nlbench.methods import METHODS, Method, StepOutput, create_method, get_method, list_methods
from nlbench.options import Choice, Range, bind_options
from tests.test_methods_all import tiny_config

EVENTS: list = []


class Probe(Method):
    """Records what the harness hands it; trains a second network alongside the main one."""

    def setup(self, ctx):
        super().setup(ctx)
        EVENTS.append(("setup", len(ctx.meta_y), ctx.noise_rate, len(ctx.train_y), ctx.epochs))
        self.second = ctx.new_model(1)
        self.first_params = [p.detach().clone() for p in ctx.model.parameters()]

    def networks(self):
        return [self.second]

    def on_epoch_start(self, epoch, model):
        logits = self.ctx.predict(model)
        EVENTS.append(("start", epoch, tuple(logits.shape), model.training))

    def step(self, batch, model):
        return StepOutput(F.cross_entropy(model(batch.x), batch.y) + F.cross_entropy(self.second(batch.x), batch.y))

    def on_epoch_end(self, epoch, model):
        EVENTS.append(("end", epoch))

    def eval_model(self, model):
        return self.second


@pytest.fixture
def probe():
    EVENTS.clear()
    names = []

    def register(name, **flags):
        cls = type(name.replace("-", "_"), (Probe,), dict(flags))
        METHODS.register(name)(cls)
        cls.name = name
        names.append(name)
        return cls

    yield register
    for n in names:
        METHODS._items.pop(n, None)


def test_hooks_run_in_order_and_the_meta_set_is_withheld(probe, tmp_path):
    probe("probe-plain")
    record = train(tiny_config("probe-plain"), device="cpu")
    assert record["status"] == "ok"
    setup = EVENTS[0]
    assert setup[0] == "setup" and setup[1] == 0, "a method without uses_meta must get an empty meta set"
    assert setup[2] is None, "the nominal noise rate is only for methods that declare it"
    assert setup[3:] == (record["sizes"]["train"], 2)
    n = record["sizes"]["train"]
    assert EVENTS[1:] == [("start", 1, (n, 4), True), ("end", 1), ("start", 2, (n, 4), True), ("end", 2)]
    assert record["uses_noise_rate"] is False and record["uses_meta"] is False


def test_flags_give_the_meta_set_and_the_noise_rate(probe):
    probe("probe-flags", uses_meta=True, uses_noise_rate=True)
    record = train(tiny_config("probe-flags"), device="cpu")
    assert EVENTS[0][1] == 40 and EVENTS[0][2] == pytest.approx(0.4)
    assert record["uses_noise_rate"] is True and record["uses_meta"] is True


def test_extra_network_is_trained_and_evaluated(probe):
    """The second network's parameters move (the run's optimiser has them) and its accuracy is what is recorded."""
    cls = probe("probe-second")
    seen = {}
    orig = cls.on_epoch_end

    def capture(self, epoch, model):
        orig(self, epoch, model)
        seen["second"] = [p.detach().clone() for p in self.second.parameters()]
        seen["init"] = self.second_init
        seen["main"] = model

    def setup(self, ctx):
        Probe.setup(self, ctx)
        self.second_init = [p.detach().clone() for p in self.second.parameters()]

    cls.on_epoch_end, cls.setup = capture, setup
    record = train(tiny_config("probe-second"), device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(seen["second"], seen["init"], strict=True))
    # the second network has its own initialisation stream, not a copy of the main model's
    main_init = [p for p in seen["main"].parameters()]
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(seen["init"], main_init, strict=True))
    assert record["final"]["epochs_done"] == 2


def test_nominal_rate():
    assert nominal_rate({"nominal_transition_matrix": [[0.5, 0.5], [0.5, 0.5]]}) == pytest.approx(0.5)
    # asym on 10 classes with 7 mapped at 40%: 1 - (3 + 7 * 0.6) / 10
    T = torch.eye(10)
    for c in range(7):
        T[c, c] = 0.6
    assert nominal_rate({"nominal_transition_matrix": T.tolist()}) == pytest.approx(0.28)
    assert nominal_rate({"transition_matrix": [[0.9, 0.1], [0.3, 0.7]]}) == pytest.approx(0.2)


def test_every_method_has_a_one_line_summary():
    for name in list_methods():
        summary = get_method(name).summary
        assert summary and "\n" not in summary and "``" not in summary and ":func:" not in summary, name


def test_bind_options_one_rule_for_every_method():
    def f(*, a: Annotated_float_01 = 0.5, mode: Annotated_mode = "x", n: Annotated_int | None = None):
        pass

    assert bind_options(f, {"a": "0.25", "n": "3", "mode": "y"}, "f") == {"a": 0.25, "n": 3, "mode": "y"}
    for bad, msg in [({"a": 1.5}, r"option a must be in \[0, 1\]"), ({"a": float("inf")}, "must be finite"),
                     ({"a": "nan"}, "must be finite"), ({"mode": "z"}, "must be one of x, y"),
                     ({"n": 2.5}, "must be an integer or none"), ({"b": 1}, "unknown option 'b'.*Valid: a, mode, n"),
                     ({"n": 10**12}, r"must be in \[1, 1000\]"), ({"a": True}, "must be a number")]:
        with pytest.raises(NLBenchError, match=msg):
            bind_options(f, bad, "f")


from typing import Annotated  # noqa: E402

Annotated_float_01 = Annotated[float, Range(0, 1)]
Annotated_mode = Annotated[str, Choice("x", "y")]
Annotated_int = Annotated[int, Range(1, 1000)]


def test_method_options_are_validated_from_annotations():
    with pytest.raises(NLBenchError, match="must be finite"):
        create_method("meta-reweight", alpha=float("inf"))
    with pytest.raises(NLBenchError, match=r"hidden must be in \[1, 10000\]"):
        create_method("mwnet", hidden=100_000_000_000)
    with pytest.raises(NLBenchError, match="unknown option 'qq'.*Did you mean 'q'"):
        create_method("gce", qq=0.5)
    assert create_method("surrogate", refresh="batch").refresh == "batch"
    assert create_method("surrogate", refresh="7").refresh == 7


def test_finetune_switches_to_the_meta_set_for_its_last_epochs(tmp_path):
    """Stage 2 steps train on meta batches: with a meta set whose labels are all one class, the fine-tuned model
    predicts that class everywhere."""
    m = create_method("finetune")
    assert m.options() == {"finetune_epochs": None}
    rec = train(tiny_config("finetune", epochs=5, method_options={"finetune_epochs": 2}), device="cpu")
    assert rec["status"] == "ok" and rec["uses_meta"] is True
    fm = create_method("finetune", finetune_epochs=2)

    class Ctx:
        epochs = 5
        meta_y = torch.zeros(8, dtype=torch.long)

    fm.setup(Ctx)
    assert fm.first_finetune_epoch == 4
    Ctx.epochs = 1
    fm.setup(Ctx)
    assert fm.first_finetune_epoch == 1
    fm = create_method("finetune")
    Ctx.epochs = 30
    fm.setup(Ctx)
    assert fm.first_finetune_epoch == 25, "default: the last fifth of the run"


def test_finetune_stage_two_uses_only_the_meta_batch():
    fm = create_method("finetune", finetune_epochs=1)
    model = torch.nn.Linear(3, 2)

    class Ctx:
        epochs = 2
        batch_size = 4
        meta_x = torch.ones(4, 3)
        meta_y = torch.tensor([1, 1, 1, 1])
        generator = torch.Generator().manual_seed(0)

    fm.setup(Ctx)
    from nlbench.methods import Batch

    pool = Batch(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.arange(4), 0.1, 0, 1)
    assert fm.step(pool, model).loss.item() == pytest.approx(F.cross_entropy(model(pool.x), pool.y).item())
    tuned = Batch(pool.x, pool.y, pool.idx, 0.1, 5, 2)
    want = F.cross_entropy(model(Ctx.meta_x), Ctx.meta_y).item()
    assert fm.step(tuned, model).loss.item() == pytest.approx(want)
