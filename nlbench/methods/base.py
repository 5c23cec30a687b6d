"""The small interface through which every method plugs into the one training loop.

The harness owns the loop: it shuffles, slices batches, steps the optimiser and the schedule, evaluates and
records. A method only says which samples it trains on and what the loss of a batch is::

    @register_method("my-method")
    class MyMethod(Method):
        def step(self, batch, model):
            losses = F.cross_entropy(model(batch.x), batch.y, reduction="none")
            return StepOutput(losses.mean())

Methods never see true labels of the noisy pool. ``batch.idx`` indexes the training set the method chose in
:meth:`Method.train_set`, so per-sample state (persistent weights, ELR's targets) can live in the method.

A method may also, without copying the loop:

- run code at the start and end of every epoch (:meth:`Method.on_epoch_start`, :meth:`Method.on_epoch_end`),
  with the training set's logits a call away (:meth:`MethodContext.predict`): DivideMix's GMM, PES's stages;
- own extra networks (:meth:`MethodContext.new_model` builds one from the run's seeded streams); those
  returned by :meth:`Method.networks` are trained by the run's optimiser and schedule, and
  :meth:`Method.eval_model` says which network, or ensemble, is evaluated. A method may also keep a private
  optimiser for its own parameters (MW-Net's weight net);
- train in stages (:meth:`Method.stages`, :meth:`Method.on_stage_start`): the run's epochs again from a restarted
  schedule, as two-stage protocols (``forward``, ``glc``) train a second network after the first;
- declare what it reads beyond the noisy pool: ``uses_meta`` (the clean meta set; a method without it gets an
  empty one), ``uses_noise_rate`` (the nominal noise rate, which a practitioner does not know) and ``oracle``
  (ground truth). The last two are flagged in every output and never ranked with plain methods.

Options are the keyword parameters of ``__init__``; :func:`nlbench.options.bind_options` validates them from
their annotations for every method the same way (``Annotated[float, Range(0, 1)]``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from nlbench.errors import NLBenchError
from nlbench.registry import Registry


@dataclass
class TrainSet:
    """Inputs (device-resident, raw: uint8 images or float vectors), the labels a method may train on, and the
    benchmark's ground truth ``is_noisy`` (for telemetry only; methods must not read it)."""

    x: torch.Tensor
    y: torch.Tensor
    is_noisy: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> TrainSet:
        return TrainSet(self.x[idx], self.y[idx], self.is_noisy[idx])


@dataclass
class TrainData:
    """Everything the harness prepared: the noisy pool, the clean meta set, the (noisy) validation split and the
    test split, all on the device. ``pool_true`` are the true pool labels (oracle and telemetry only)."""

    pool: TrainSet
    pool_true: torch.Tensor
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


@dataclass
class Batch:
    """One training batch: ``x`` is normalised and ready for the model; ``idx`` indexes the training set."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    lr: float
    step: int
    epoch: int


@dataclass
class StepOutput:
    """The loss to back-propagate and, for reweighting methods, the weight of each batch sample in [0, 1]
    (used for telemetry; a method whose raw weights are normalised reports them rescaled, see its docstring)."""

    loss: torch.Tensor
    weights: torch.Tensor | None = None


@dataclass
class MethodContext:
    """What a method may use at set-up: the model, the meta set (normalised), sizes and helpers.

    ``prep`` turns raw inputs into model inputs (normalisation); ``autocast`` is the harness's mixed-precision
    context; ``generator`` is the method's own seeded torch generator (e.g. for meta batches).
    """

    model: nn.Module
    meta_x: torch.Tensor
    meta_y: torch.Tensor
    num_train: int
    num_classes: int
    batch_size: int
    device: torch.device
    generator: torch.Generator
    prep: Callable[[torch.Tensor], torch.Tensor]
    autocast: Callable[[], AbstractContextManager]
    #: the raw inputs and the (noisy) labels of the training set the method iterates over
    train_x: torch.Tensor | None = None
    train_y: torch.Tensor | None = None
    epochs: int = 1
    steps_per_epoch: int = 1
    #: the noise spec's nominal rate; only for methods that declare ``uses_noise_rate`` (else None)
    noise_rate: float | None = None
    #: builds a fresh network of the run's architecture; ``new_model(k)`` is seeded from the run's seed and ``k``
    model_factory: Callable[[int], nn.Module] | None = None
    eval_batch: int = 1000
    #: the noisy validation split (raw inputs, noisy labels; empty without ``--val-size``), for the model
    #: selection some official protocols make within a run (GCE's pruning model, forward's estimator network)
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    #: whether the run augments its batches (``--augment``): a method drawing its own batches augments them itself
    augment: bool = False

    def new_model(self, k: int = 1) -> nn.Module:
        """A new network of the run's architecture on the device, initialised from stream ``k`` of the run's
        seed (``k = 0`` is the main model's stream, so extra networks use ``k >= 1``)."""
        if self.model_factory is None:
            raise RuntimeError("this context has no model factory")
        return self.model_factory(k)

    def predict(self, model: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (float32) of ``model`` in eval mode for raw inputs ``x`` (default: the whole training set),
        in batches, without gradients; the model's train/eval mode is restored."""
        return self._logits(model, self.train_x if x is None else x, self.prep)

    def val_accuracy(self, model: nn.Module) -> float | None:
        """Accuracy of ``model`` (eval mode) on the noisy validation split; None when the run has none."""
        if self.val_x is None or self.val_y is None or len(self.val_y) == 0:
            return None
        return (self.predict(model, self.val_x).argmax(1) == self.val_y).double().mean().item()

    def predict_meta(self, model: nn.Module) -> torch.Tensor:
        """Logits (float32) of ``model`` on the meta set, as :meth:`predict` (``meta_x`` is already model-ready)."""
        return self._logits(model, self.meta_x, None)

    def sample_meta(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A meta batch ``(x, y)`` of ``size`` distinct samples drawn with ``generator``; the whole meta set when
        ``size`` is at least its size."""
        m = len(self.meta_y)
        if size >= m:
            return self.meta_x, self.meta_y
        idx = torch.randperm(m, generator=self.generator, device=self.meta_y.device)[:size]
        return self.meta_x[idx], self.meta_y[idx]

    @torch.no_grad()
    def _logits(self, model: nn.Module, x: torch.Tensor,
                prep: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        was_training = model.training
        model.eval()
        try:
            out = []
            for i in range(0, len(x), self.eval_batch):
                chunk = x[i:i + self.eval_batch]
                with self.autocast():
                    out.append(model(chunk if prep is None else prep(chunk)).float())
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.num_classes, device=self.device)


class Method:
    """Base class of all methods. Options come from ``--opt key=value`` / ``method_options`` as keyword
    arguments of ``__init__``, validated by :func:`nlbench.options.bind_options` from their annotations."""

    #: True for methods that see ground truth (upper bounds); flagged in every output.
    oracle: ClassVar[bool] = False
    #: True if :meth:`step` returns per-sample weights (weight telemetry is recorded).
    reweights: ClassVar[bool] = False
    #: True if the method uses the clean meta set; a method without it gets an empty meta set.
    uses_meta: ClassVar[bool] = False
    #: True if the method reads the nominal noise rate (``ctx.noise_rate``); flagged in every output.
    uses_noise_rate: ClassVar[bool] = False
    #: One line for ``nlbench list methods`` (default: the first line of the class docstring).
    summary: ClassVar[str] = ""
    #: Option values per noise family (``{"class-dependent": {"beta": 0.9}}``, families as in
    #: :data:`nlbench.noise.NOISE_FAMILIES`), for methods whose official configurations differ by noise type
    #: (ELR's and DivideMix's "sym" and "asym" configs). They apply below a preset's tuned values and explicit
    #: options, and land in the run's ``method_options``, so the config hash says what ran.
    family_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    #: Bumped whenever the method's computation changes under unchanged options (a fixed deviation from the
    #: official code, a new default): a finished record of an older version is stale and is trained again
    #: instead of being reused (:func:`nlbench.benchmark.records.find_record`). Records without one are version 1.
    version: ClassVar[int] = 1
    #: For a method of several stages (:meth:`stages`): True keeps the optimiser's state (momentum buffers) across
    #: a stage boundary, as GLC's official code reuses its optimiser; False (the default) gives every stage a
    #: fresh optimiser, as a new training run has.
    keep_optimizer_state: ClassVar[bool] = False

    def __init__(self) -> None:
        pass

    def train_set(self, data: TrainData) -> TrainSet:
        """The samples to iterate over; the noisy pool by default."""
        return data.pool

    def setup(self, ctx: MethodContext) -> None:
        """Called once before training, after :meth:`train_set`. A method that ``uses_meta`` is refused an empty
        meta set here, once for all of them."""
        if self.uses_meta and len(ctx.meta_y) == 0:
            raise NLBenchError(f"method {self.name!r} needs a clean meta set; use --meta-size > 0")
        self.ctx = ctx

    def networks(self) -> list[nn.Module]:
        """Extra networks the method owns (made in :meth:`setup`); the harness trains their parameters with the
        run's optimiser and schedule and puts them in train mode every epoch."""
        return []

    def stages(self) -> int:
        """How many times the run's ``epochs`` are trained, asked once after :meth:`setup`; 1 by default.

        A method of ``S > 1`` stages (``forward`` and ``glc``: a cross-entropy network that estimates the noise,
        then a corrected one trained anew) runs ``S * epochs`` epochs in the one loop, numbered on (epoch
        ``epochs + 1`` is the first of stage 2). At each stage boundary the learning-rate schedule restarts,
        :meth:`on_stage_start` is called, and the optimiser's state is reset unless
        :attr:`keep_optimizer_state`. Every history entry carries its ``stage``, the record its ``stages``, and
        the record's ``final`` summarises the last stage (its network is the method's result); the wall time
        and epoch times count every stage."""
        return 1

    def on_stage_start(self, stage: int, model: nn.Module) -> None:
        """Called before the first epoch of stage ``stage`` (2, 3, ...; see :meth:`stages`), before that epoch's
        :meth:`on_epoch_start` and before the optimiser is reset."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Called before the first step of every epoch (``epoch`` counts from 1)."""

    def epoch_steps(self, epoch: int) -> int | None:
        """How many steps epoch ``epoch`` takes, asked after :meth:`on_epoch_start`; None (the default) is one
        pass over the training set. A method whose epochs have their own length (DivideMix: one pass over its
        labelled set) draws its own batches; the learning rate then follows the schedule by fractional epoch."""
        return None

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        raise NotImplementedError

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """Called after the last step of every epoch, before evaluation."""

    def epoch_log(self) -> dict[str, float]:
        """Numbers the method adds to this epoch's history entry (DivideMix's labelled share, a forget rate),
        read after :meth:`on_epoch_end`; keys must not clash with the harness's own."""
        return {}

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network (or ensemble module) whose accuracy is recorded; the main model by default."""
        return model

    def sample_weights(self) -> torch.Tensor | None:
        """Persistent per-sample weights over the training set, if the method keeps them (for telemetry)."""
        return None

    def options(self) -> dict[str, Any]:
        """The resolved options, recorded with the run."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The method's state for a mid-run checkpoint: by default every attribute but ``ctx`` (tensors,
        modules, optimisers, generators and plain values; see :mod:`nlbench.benchmark.checkpoint`). Override
        both this and :meth:`load_state_dict` if the method holds anything else."""
        from nlbench.benchmark.checkpoint import capture

        return capture(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a method that has been :meth:`setup` for the same run."""
        from nlbench.benchmark.checkpoint import restore

        restore(self, state)


METHODS: Registry = Registry("method")


def plain_summary(doc: str) -> str:
    """The first paragraph of a docstring as one line of plain text: reST roles and literals unwrapped."""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register a :class:`Method` subclass under ``name``; raises on a duplicate name."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) needs a Method subclass, got {cls!r}")
        cls.name = name
        if "summary" not in cls.__dict__:
            cls.summary = plain_summary(inspect.getdoc(cls) or "")
        return METHODS.register(name, aliases=aliases)(cls)

    return deco
