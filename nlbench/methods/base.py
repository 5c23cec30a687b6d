"""The small interface through which every method plugs into the one training loop.

The harness owns the loop: it shuffles, slices batches, steps the optimiser and the schedule, evaluates and
records. A method only says which samples it trains on and what the loss of a batch is::

    @register_method("my-method")
    class MyMethod(Method):
        def step(self, batch, model):
            losses = F.cross_entropy(model(batch.x), batch.y, reduction="none")
            return StepOutput(losses.mean())

Methods never see true labels of the noisy pool. ``batch.idx`` indexes the training set the method chose in
:meth:`Method.train_set`, so per-sample state (persistent weights) can live in the method.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

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


class Method:
    """Base class of all methods. Options come from ``--opt key=value`` / ``method_options`` as keyword
    arguments of ``__init__``; unknown options raise ``TypeError`` (reported as a user error)."""

    #: True for methods that see ground truth (upper bounds); flagged in every output.
    oracle: ClassVar[bool] = False
    #: True if :meth:`step` returns per-sample weights (weight telemetry is recorded).
    reweights: ClassVar[bool] = False
    #: True if the method uses the clean meta set.
    uses_meta: ClassVar[bool] = False

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"{type(self).__name__} takes no options, got {sorted(options)}")

    def train_set(self, data: TrainData) -> TrainSet:
        """The samples to iterate over; the noisy pool by default."""
        return data.pool

    def setup(self, ctx: MethodContext) -> None:
        """Called once before training, after :meth:`train_set`."""
        self.ctx = ctx

    def step(self, batch: Batch, model: nn.Module) -> StepOutput:
        raise NotImplementedError

    def sample_weights(self) -> torch.Tensor | None:
        """Persistent per-sample weights over the training set, if the method keeps them (for telemetry)."""
        return None

    def options(self) -> dict[str, Any]:
        """The resolved options, recorded with the run."""
        return {}


METHODS: Registry = Registry("method")


def register_method(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator: register a :class:`Method` subclass under ``name``; raises on a duplicate name."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) needs a Method subclass, got {cls!r}")
        cls.name = name
        return METHODS.register(name, aliases=aliases)(cls)

    return deco
