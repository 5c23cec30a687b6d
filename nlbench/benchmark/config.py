"""The typed configuration of one run and its hash."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any

from nlbench.errors import NLBenchError, did_you_mean
from nlbench.options import Range
from nlbench.registry import Registry

#: Named protocols (``--preset``): RunConfig defaults that explicit options override. See docs/methods.md,
#: "Reference protocols".
_FINE = dict(model="resnet34", epochs=120, batch_size=128, lr=0.02, momentum=0.9, weight_decay=1e-3,
             schedule="step", milestones=(40, 80), gamma=0.01, augment=True, meta_size=1000)
_MWNET = dict(model="resnet32", epochs=120, batch_size=100, lr=0.1, momentum=0.9, weight_decay=5e-4,
              schedule="step", milestones=(80, 100), gamma=0.1, augment=True, meta_size=1000)
_PRESETS: dict[str, dict[str, Any]] = {
    "fmnist": dict(dataset="fashion-mnist", model="lenet", epochs=3, batch_size=128, lr=0.05, momentum=0.9,
                   weight_decay=5e-4, schedule="cosine", meta_size=1000),
    # The memorisation protocol (found by benchmarks/protocol_search.py, table in results/protocol/search.md): a
    # class-balanced 5,100-image training split (clean meta set 100, noisy validation 1000, noisy pool 4000), a
    # 512x2 MLP without weight decay and 30 epochs, lr x0.1 at 25. ERM's test accuracy peaks early and then falls
    # by 15.5 (sym50) and 12.8 (pairflip45) points as it memorises, and by 0.1 on clean labels (3 seeds). The
    # meta set keeps MW-Net's ratio to the pool (1000 of 49,000, about 2%): with 1000 clean samples beside a
    # 4000-sample pool, clean-only training beat every method that uses the pool (results/protocol/meta1000.md).
    "fmnist-memorize": dict(dataset="fashion-mnist", model="mlp512", epochs=30, batch_size=64, lr=0.05,
                            momentum=0.9, weight_decay=0.0, schedule="step", milestones=(25,), gamma=0.1,
                            meta_size=100, val_size=1000, dataset_options={"train_size": 5100},
                            # chosen on noisy validation by benchmarks/sweep_memorize.py (table in
                            # results/sweeps/memorize/summary.md); the surrogate's ablations share its alpha
                            method_defaults={m: {"alpha": 3.0} for m in ("surrogate", "surrogate-no-center",
                                                                        "surrogate-no-shift", "surrogate-no-sign")}
                            | {"meta-reweight": {"alpha": 1.0, "w0": 1.0}}),
    # FINE (Kim et al. 2021), the paper's likely setting: ResNet-34, SGD 0.02, wd 1e-3, 120 epochs, x0.01 at 40/80.
    **{f"{ds}-paper": dict(_FINE, dataset=ds) for ds in ("cifar10", "cifar100", "cifar10-jpeg")},
    # MW-Net (Shu et al. 2019): ResNet-32, SGD 0.1, wd 5e-4, batch 100, 120 epochs, x0.1 at 80/100.
    **{f"mwnet-{ds}": dict(_MWNET, dataset=ds) for ds in ("cifar10", "cifar100")},
    # Clothing1M: ResNet-50, batch 64, lr 0.002, 10 epochs (the paper starts from ImageNet weights, which nlbench
    # does not download; see the README).
    "clothing1m-paper": dict(dataset="clothing1m", model="resnet50", epochs=10, batch_size=64, lr=0.002,
                             momentum=0.9, weight_decay=1e-3, schedule="step", milestones=(5,), gamma=0.1,
                             augment=True, meta_size=1000, noise="clean"),
    # A short GPU protocol on the airbench94-style cifar-fast net (Jordan 2024: ~10 epochs, batch 1024, Nesterov
    # SGD, label smoothing, whitening init, TTA). The harness has plain SGD with momentum and no warm-up, label
    # smoothing or TTA, and cifar-fast has no whitening init, so: twice the epochs, Goyal et al.'s peak lr
    # 0.1 x 1024/256 = 0.4, cosine to 0, crop + flip. Its target, >= 93% clean test accuracy on CIFAR-10, is NOT
    # measured yet (no GPU so far); see the README's "GPU" section. cifar10-jpeg-fast: the same on the JPEG copy.
    **{f"{ds}-fast": dict(dataset=ds, model="cifar-fast", epochs=20, batch_size=1024, lr=0.4, momentum=0.9,
                          weight_decay=5e-4, schedule="cosine", augment=True, meta_size=1000)
       for ds in ("cifar10", "cifar10-jpeg")},
}
#: The preset key of per-method options, ``{method: {option: value}}``: a protocol's tuned defaults for the
#: methods that want different ones there (explicit options override them; they land in the record's
#: ``method_options``, so the config hash says what ran).
METHOD_DEFAULTS = "method_defaults"
PRESETS: Registry = Registry("preset")
#: the option dicts of RunConfig: set, merged and swept key by key
OPTION_DICTS = ("method_options", "dataset_options", "record_options")
for _name, _values in _PRESETS.items():
    PRESETS.add(_name, _values)


#: RunConfig fields that identify one run within a protocol (`run --method/--noise/--seed`, a grid's axes)
PER_RUN = ("method", "noise", "seed")
#: Largest settings file read (``--config``, a grid file): a run's settings are a few hundred bytes.
MAX_CONFIG_BYTES = 1 << 20


def read_toml(path: str | os.PathLike, label: str) -> dict[str, Any]:
    """A TOML file of settings read as untrusted input (a regular file only, never a FIFO; bounded size; nesting
    that would exhaust the parser refused); every failure is one NLBenchError line naming ``label`` (``grid
    file``, ``--config``) and the path."""
    import tomllib

    from nlbench.safe_io import read_bounded

    raw = read_bounded(path, MAX_CONFIG_BYTES, label)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise NLBenchError(f"{label} {path} is nested too deeply") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise NLBenchError(f"{label} {path} is not valid TOML: {e}") from None


def check_keys(where: str, keys: Iterable[str], valid: Iterable[str]) -> None:
    """Refuse the first key not in ``valid``, with the closest valid one and the list."""
    valid = sorted(set(valid))
    for key in keys:
        if key not in valid:
            hint = did_you_mean(key, valid, cutoff=0.6)
            raise NLBenchError(f"{where}: unknown key {key!r}.{hint} Valid: {', '.join(valid)}")


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a ``--config`` TOML file (RunConfig keys and ``preset``), read as untrusted input
    (:func:`read_toml`): unknown keys refused with the valid ones, and every value type-checked as
    :meth:`RunConfig.validate` checks it (``method = 5``, ``augment = "no"``, ``method_options = "q=0.1"`` are
    errors, never dropped or coerced). Raises :class:`NLBenchError`."""
    table = read_toml(path, "--config")
    check_keys(f"--config {path}", table, {f.name for f in fields(RunConfig)} | {"preset"})
    if "preset" in table and (not isinstance(table["preset"], str) or table["preset"] not in PRESETS):
        PRESETS.canonical(str(table["preset"])[:80])  # raises with the valid names
    if isinstance(table.get("milestones"), list):
        table["milestones"] = tuple(table["milestones"])
    # every value checked now, as RunConfig checks it (explicit options may still override it later)
    probe = {k: v for k, v in table.items() if k != "preset"}
    try:
        RunConfig(**{**probe, "epochs": probe.get("epochs", 10_000)} if "milestones" in probe else probe)
    except NLBenchError as e:
        raise NLBenchError(f"--config {path}: {e}") from None
    return table


def preset_method_options(per_method: dict[str, dict[str, Any]], method: str) -> dict[str, Any]:
    """The options a preset's ``method_defaults`` give ``method`` (aliases resolved; ``{}`` if none)."""
    from nlbench.methods import get_method

    return dict(per_method.get(get_method(method).name, {}))


#: The allowed range of every numeric RunConfig field but the seeds (checked by :meth:`RunConfig.validate`).
NUMERIC_FIELDS: dict[str, Any] = {
    "epochs": Annotated[int, Range(1, 10_000)],
    "batch_size": Annotated[int, Range(2, 65_536)],
    "lr": Annotated[float, Range(0, 10, low_open=True)],
    "momentum": Annotated[float, Range(0, 1, high_open=True)],
    "weight_decay": Annotated[float, Range(0, 1)],
    "gamma": Annotated[float, Range(0, 1, low_open=True)],
    "meta_size": Annotated[int, Range(0, 10**7)],
    "val_size": Annotated[int, Range(0, 10**7)],
}


#: The keys ``record_options`` may hold (telemetry that changes the record, not the result; see
#: nlbench.benchmark.features): a typo must be refused, not silently ignored.
RECORD_OPTIONS = ("feature_epochs", "feature_samples")
#: The string fields of a config and the longest value each may have.
_STR_FIELDS = ("method", "noise", "dataset", "model", "schedule")
_MAX_NAME = 200
#: Option values: JSON-like trees at most this deep, with at most this many leaves in all.
_MAX_OPTION_DEPTH, _MAX_OPTION_LEAVES = 4, 10_000
_OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_FIELD_FLAGS = {"method_options": "--opt", "dataset_options": "--data-opt", "record_options": "record_options"}


def _option_tree_problem(v: Any, depth: int = 0, budget: list[int] | None = None) -> str | None:
    """Why ``v`` is not a plain option value (None, bool, int, float, str, or lists / tables of them, shallow
    and bounded); ``None`` if it is one."""
    budget = [0] if budget is None else budget
    budget[0] += 1
    if budget[0] > _MAX_OPTION_LEAVES:
        return f"more than {_MAX_OPTION_LEAVES} values"
    if v is None or isinstance(v, bool | int | float | str):
        return None if not isinstance(v, str) or len(v) <= 10_000 else "a string over 10,000 characters"
    if depth >= _MAX_OPTION_DEPTH:
        return f"nested deeper than {_MAX_OPTION_DEPTH} levels"
    if isinstance(v, list | tuple):
        return next((p for x in v if (p := _option_tree_problem(x, depth + 1, budget))), None)
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            return "a table with non-string keys"
        return next((p for x in v.values() if (p := _option_tree_problem(x, depth + 1, budget))), None)
    return f"a {type(v).__name__}"


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _short(v: Any) -> str:
    """``repr(v)`` for an error line, cut at 40 characters (a 400-digit integer must not fill the terminal)."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over the canonical JSON of a config dict (:meth:`RunConfig.to_dict`, or the
    ``config`` of a stored record, which re-hashes to its ``config_hash``)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class RunConfig:
    """Everything that determines a run's result. The defaults are the Fashion-MNIST protocol of the leaderboard
    (LeNet, 3 epochs, SGD 0.05 with momentum 0.9, cosine, batch 128, meta set 1000).

    ``noise_seed`` defaults to ``seed``, so different training seeds see different noise draws (a fixed noise
    seed for every run is a known trap); pass it explicitly to hold the noise fixed across training seeds. The
    meta/validation split is drawn from the noise seed as well.
    """

    method: str = "erm"
    noise: str = "clean"
    dataset: str = "fashion-mnist"
    model: str | None = None
    seed: int = 0
    noise_seed: int | None = None
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    meta_size: int = 1000
    val_size: int = 0
    augment: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    #: telemetry of feature snapshots etc. that do not change the result but the record
    record_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list | tuple):  # anything else is refused by validate()
            self.milestones = tuple(int(m) if _is_int(m) else m for m in self.milestones)
        if self.model is None and isinstance(self.dataset, str):  # the dataset's registration declares it
            from nlbench.datasets import default_model

            self.model = default_model(self.dataset)
        self.validate()

    @property
    def effective_noise_seed(self) -> int:
        return self.seed if self.noise_seed is None else self.noise_seed

    def validate(self) -> None:
        """Raise :class:`NLBenchError` for values no run can use: the one check of every field, whatever door
        the value came through (CLI, ``--config``, grids, the Python API, a record's or checkpoint's config),
        so they all refuse the same inputs: types are strict (``augment = "no"`` is not a boolean, ``method =
        5`` not a name), numbers in range (:data:`NUMERIC_FIELDS`), option dicts are tables of plain values and
        ``record_options`` has only the keys of :data:`RECORD_OPTIONS`."""
        for name in _STR_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, str) or not v or len(v) > _MAX_NAME or not v.isprintable():
                raise NLBenchError(f"--{name.replace('_', '-')} must be a name (a non-empty string of at most "
                                   f"{_MAX_NAME} printable characters), got {_short(v)}")
        if not isinstance(self.augment, bool):
            raise NLBenchError(f"--augment must be true or false, got {_short(self.augment)}")
        for name, flag in _FIELD_FLAGS.items():
            opts = getattr(self, name)
            if not isinstance(opts, dict):
                raise NLBenchError(f"{name} must be a table of key = value ({flag} key=value), got {_short(opts)}")
            for key, value in opts.items():
                if not isinstance(key, str) or not _OPTION_KEY.fullmatch(key.replace("-", "_")):
                    raise NLBenchError(f"{name}: option name {_short(key)} is not an identifier")
                problem = _option_tree_problem(value)
                if problem:
                    raise NLBenchError(f"{name}: option {key} must be a plain value, got {problem}")
        unknown = sorted(set(self.record_options) - set(RECORD_OPTIONS))
        if unknown:
            raise NLBenchError(f"unknown record option {unknown[0]!r}.{did_you_mean(unknown[0], RECORD_OPTIONS)} "
                               f"Valid: {', '.join(RECORD_OPTIONS)}")
        for name in ("seed", "noise_seed"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v < 2**63):
                raise NLBenchError(f"--{name.replace('_', '-')} must be an integer in [0, 2^63), got {_short(v)}")
        for name, hint in NUMERIC_FIELDS.items():
            flag, v = f"--{name.replace('_', '-')}", getattr(self, name)
            is_int = hint.__origin__ is int
            if not (_is_int(v) if is_int else isinstance(v, numbers.Real) and not isinstance(v, bool)):
                raise NLBenchError(f"{flag} must be {'an integer' if is_int else 'a number'}, got {_short(v)}")
            if name == "epochs" and v < 1:
                raise NLBenchError(f"--epochs must be at least 1, got {v}")
            if name in ("meta_size", "val_size") and v < 0:
                raise NLBenchError(f"--meta-size and --val-size must be non-negative, got {flag} {v}")
            if not isinstance(v, numbers.Integral) and not math.isfinite(v):
                raise NLBenchError(f"{flag} must be finite, got {v!r}")
            for r in hint.__metadata__:
                if not r.contains(v):
                    raise NLBenchError(f"{flag} must be in {r}, got {_short(v)}")
        ms = self.milestones
        if not isinstance(ms, tuple) or not all(_is_int(m) for m in ms):
            raise NLBenchError(f"--milestones must be integers, got {_short(ms)}")
        if any(not 1 <= m <= self.epochs for m in ms) or any(a >= b for a, b in zip(ms, ms[1:], strict=False)):
            raise NLBenchError(f"--milestones must be strictly increasing epochs in [1, {self.epochs}] (--epochs), "
                               f"got {_short(ms)}")
        reserved = {"root", "download"} & set(self.dataset_options)
        if reserved:
            raise NLBenchError(f"dataset option(s) {', '.join(sorted(reserved))} cannot be set with --data-opt; "
                               "use --data-root / --download")
        if self.schedule not in ("cosine", "step", "constant"):
            raise NLBenchError(f"--schedule must be cosine, step or constant, got {self.schedule!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> RunConfig:
        """Build a config from a named preset (or the built-in defaults) with ``overrides`` on top."""
        base: dict[str, Any] = dict(PRESETS.get(preset)) if preset is not None else {}
        per_method = base.pop(METHOD_DEFAULTS, {})
        if per_method and "method" in overrides:
            base["method_options"] = dict(preset_method_options(per_method, overrides["method"]))
        for key, value in overrides.items():
            # option dicts merge key by key: `--data-opt x=1` (or no --data-opt at all) keeps the preset's
            # train_size instead of silently training on the full pool
            if key in OPTION_DICTS and isinstance(value, dict) and isinstance(base.get(key), dict):
                value = {**base[key], **value}
            base[key] = value
        return cls(**base)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def hash(self) -> str:
        """12 hex digits of SHA-256 over the canonical JSON of the config: the identity of a run."""
        return config_hash(self.to_dict())

    def run_name(self) -> str:
        """File-name stem that says what the run was: ``dataset__method__noise__s0__<hash>``."""
        return f"{self.dataset}__{self.method}__{self.noise}__s{self.seed}__{self.hash()}"
