"""The options ``nlbench run`` and ``nlbench grid`` share, derived from :class:`RunConfig`.

Every RunConfig field but the per-run identity (``method``, ``noise``, ``seed``: ``run --method``, ``grid
--methods``) becomes one option of both commands: its name is the field's (``val_size`` -> ``--val-size``), its
type the field's, its default ``None`` (not given: the config file's, the preset's or RunConfig's value) and its
help the entry of :data:`FIELD_HELP`, with RunConfig's default. The option dicts have flags of their own:
``method_options`` is ``--opt``, ``dataset_options`` ``--data-opt`` and ``record_options`` ``--feature-epochs``.
Beside them come ``--preset`` and the execution options (``--results-dir``, ``--device``, ``--compile``,
``--portable``, ...).

:func:`shared_options` adds all of them to a command's signature, so a field added to RunConfig appears in both
commands at once, and the two can never drift apart; the command receives them as one :class:`SharedOptions`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from nlbench.benchmark.config import PER_RUN, RunConfig
from nlbench.errors import NLBenchError
from nlbench.portable import ENV_FLAG

RUN_FIELDS = [f.name for f in fields(RunConfig)]
RUN_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}
#: option dicts of RunConfig -> the parameter (and flag) that sets them
OPTION_DICT_PARAMS = {"method_options": "opt", "dataset_options": "data_opt", "record_options": "feature_epochs"}
_FLAGS = {"opt": "--opt", "data_opt": "--data-opt", "feature_epochs": "--feature-epochs"}


def default_text(name: str) -> str:
    """``[default: X]`` for a RunConfig field, read from RunConfig (the one source of the defaults)."""
    value = RUN_DEFAULTS[name]
    return f"\\[default: {value:g}]" if isinstance(value, float) else f"\\[default: {value}]"


#: The help of each RunConfig field's option; ``{default}`` becomes ``[default: X]`` with RunConfig's value.
FIELD_HELP: dict[str, str] = {
    "method": "Method name (see `nlbench list methods`) {default}.",
    "noise": "Noise spec, e.g. sym40, pairflip45, idn40, clean.",
    "seed": "Training seed {default}.",
    "dataset": "Dataset name {default}.",
    "model": "Model name \\[default: the dataset's].",
    "noise_seed": "Noise seed \\[default: the training seed].",
    "epochs": "Training epochs {default}.",
    "batch_size": "Batch size {default}.",
    "lr": "Peak learning rate, SGD with momentum {default}.",
    "momentum": "SGD momentum {default}.",
    "weight_decay": "Weight decay {default}.",
    "schedule": "cosine, step or constant {default}.",
    "milestones": "Step-schedule epochs, comma-separated.",
    "gamma": "Step-schedule factor of the learning rate at each milestone {default}.",
    "meta_size": "Clean meta-set size, carved before noise {default}.",
    "val_size": "Noisy validation split size {default}.",
    "augment": "Random crop + flip on the device.",
    "method_options": "Method option key=value (repeatable). In `nlbench grid` it applies to every listed method "
                      "that takes it, and key=v1,v2,... sweeps the values.",
    "dataset_options": "Dataset option key=value (repeatable). In `nlbench grid`, key=v1,v2,... sweeps the values.",
    "record_options": "Store a 2-D PCA view of penultimate features at these epochs, e.g. 0,1,3 (0 = before "
                      "training); see `nlbench plot features`.",
}

#: typer settings beyond help for some fields (the seeds are integers in [0, 2^63), checked by the parser)
_EXTRA: dict[str, dict[str, Any]] = {"seed": {"min": 0}, "noise_seed": {"min": 0}}


def field_help(name: str) -> str:
    """The help of a RunConfig field's option (a field without an entry still gets one, and a test fails)."""
    text = FIELD_HELP.get(name, f"RunConfig.{name}.")
    return text.format(default=default_text(name)) if "{default}" in text else text


def _option_type(name: str) -> Any:
    """The CLI type of a RunConfig field: its scalar type, optional (None: not given)."""
    hint = typing.get_type_hints(RunConfig)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint in (int, float, str, bool):
        return hint | None
    return str | None  # milestones: comma-separated integers


def _field_param(name: str) -> inspect.Parameter:
    if name in OPTION_DICT_PARAMS:
        param = OPTION_DICT_PARAMS[name]
        kind = str | None if param == "feature_epochs" else list[str] | None
        info = typer.Option(_FLAGS[param], help=field_help(name))
        return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[kind, info])
    info = typer.Option(help=field_help(name), **_EXTRA.get(name, {}))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[_option_type(name), info])


def per_run_option(name: str) -> Any:
    """The ``Annotated`` type of ``run``'s own ``--method``, ``--noise`` or ``--seed`` (help and checks from
    RunConfig, like the shared options)."""
    return Annotated[_option_type(name), typer.Option(help=field_help(name), **_EXTRA.get(name, {}))]


DataRoot = Annotated[Path | None, typer.Option(help="Folder with the data files (else $NLBENCH_DATA_ROOT, "
                                                    "else system locations).", envvar="NLBENCH_DATA_ROOT")]
DEFAULT_RESULTS = Path("results")


#: The environment variable of ``--portable``.
PORTABLE_ENV = ENV_FLAG


def enable_portable() -> None:
    """``--portable``: switch portable numerics on for this process and every process it starts (local grid
    workers inherit the environment; the Ray executor passes it in each task's runtime environment)."""
    from nlbench import portable

    portable.enable()


def _param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


#: Options of both commands that are not RunConfig fields, in help order: --preset first, then (after the
#: RunConfig fields) where data and records live and how runs execute.
PRESET_PARAM = _param("preset", Annotated[str | None, typer.Option(
    help="Named protocol (see `nlbench list presets`); explicit options override it.")], None)
EXECUTION_PARAMS = [
    _param("results_dir", Annotated[Path, typer.Option(help="Where records go (records land in DIR/runs/).")],
           DEFAULT_RESULTS),
    _param("data_root", DataRoot, None),
    _param("download", Annotated[bool, typer.Option(help="Download missing data (needs internet and "
                                                         "--data-root).")], False),
    _param("device", Annotated[str, typer.Option(help="auto, cpu or cuda.")], "auto"),
    _param("compile_model", Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU).")],
           False),
    _param("force", Annotated[bool, typer.Option(help="Rerun even if a finished record exists.")], False),
    _param("checkpoint_every", Annotated[float, typer.Option(
        min=0, help="Seconds between end-of-epoch checkpoints in DIR/checkpoints (0: every epoch); a killed run "
                    "resumes from its last one.")], 60.0),
    _param("no_checkpoint", Annotated[bool, typer.Option("--no-checkpoint", help="Write no checkpoints.")], False),
    _param("progress", Annotated[bool, typer.Option(
        help="Progress bar on a terminal; off a terminal, one line per epoch (run) or per finished run "
             "(grid).")], True),
    _param("portable", Annotated[bool, typer.Option(
        "--portable", envvar=PORTABLE_ENV,
        help="Portable numerics: pin CPU kernels to AVX2 and MKL's COMPATIBLE branch before torch computes "
             "anything, so the run gives the same bits on any x86-64 CPU with AVX2 (about 1.75x CPU time; "
             "grid workers, local or Ray, inherit it). The record's env.portable says so.")], False),
]
FIELD_PARAMS = [_field_param(name) for name in RUN_FIELDS if name not in PER_RUN]
SHARED_PARAMS = [PRESET_PARAM, *FIELD_PARAMS, *EXECUTION_PARAMS]
SHARED_NAMES = [p.name for p in SHARED_PARAMS]


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (numbers, true, lists), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_pair(pair: str, flag: str) -> tuple[str, str]:
    """``"alpha=0.1"`` -> ``("alpha", "0.1")`` (``-`` in keys read as ``_``)."""
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise NLBenchError(f"{flag} {pair!r} must look like key=value")
    return key.strip().replace("-", "_"), value


def parse_options(pairs: list[str] | None, flag: str = "--opt") -> dict[str, Any]:
    """``["alpha=0.1", "mode=direct"]`` -> ``{"alpha": 0.1, "mode": "direct"}`` (values parsed as JSON if they
    can be, else kept as strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, value = split_pair(pair, flag)
        out[key] = parse_value(value)
    return out


def parse_sweep_options(pairs: list[str] | None, flag: str) -> tuple[dict[str, Any], dict[str, tuple]]:
    """Grid ``--opt`` / ``--data-opt`` values: ``(fixed, swept)``. A value that is not JSON and holds commas is a
    sweep, ``alpha=0.3,1,3`` -> ``{"alpha": (0.3, 1, 3)}``; JSON (a list ``[1,2]``, a string ``"a,b"``) is one
    value."""
    fixed: dict[str, Any] = {}
    swept: dict[str, tuple] = {}
    for pair in pairs or []:
        key, text = split_pair(pair, flag)
        fixed.pop(key, None)
        swept.pop(key, None)
        try:
            fixed[key] = json.loads(text)  # a number, true, a list, a "quoted, string": one value
            continue
        except json.JSONDecodeError:
            value = text
        if "," in value:
            values = tuple(parse_value(v.strip()) for v in value.split(",") if v.strip())
            if not values:
                raise NLBenchError(f"{flag} {pair!r} sweeps no value")
            swept[key] = values
        else:
            fixed[key] = value
    return fixed, swept


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"40,80"`` -> ``(40, 80)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise NLBenchError(f"{option} must be comma-separated integers, got {text!r}") from None


@dataclass
class SharedOptions:
    """What the shared options were given on the command line (``values``: RunConfig fields, raw)."""

    preset: str | None
    values: dict[str, Any]
    results_dir: Path
    data_root: Path | None
    download: bool
    device: str
    compile_model: bool
    force: bool
    checkpoint_every: float
    no_checkpoint: bool
    progress: bool
    portable: bool = False

    def given(self) -> list[str]:
        """The flags given (preset and RunConfig fields), e.g. ``["--epochs", "--opt"]``."""
        out = ["--preset"] if self.preset is not None else []
        for name, value in self.values.items():
            if value is not None and value != []:
                param = OPTION_DICT_PARAMS.get(name, name)
                out.append(_FLAGS.get(param, "--" + param.replace("_", "-")))
        return out

    def settings(self, sweeps: bool = False) -> tuple[dict[str, Any], dict[str, tuple]]:
        """``(settings, sweep)``: the RunConfig keyword arguments given (option dicts only when given) and, with
        ``sweeps``, the swept option values as dotted keys (``{"method_options.alpha": (0.3, 1, 3)}``); without,
        a comma-separated option value is one string (``nlbench run`` takes one value)."""
        out: dict[str, Any] = {}
        sweep: dict[str, tuple] = {}
        for name, value in self.values.items():
            if value is None or value == []:
                continue
            if name == "milestones":
                out[name] = parse_ints(value, "--milestones")
            elif name == "record_options":  # sorted and unique, so 3,0,1 and 0,1,3 are the same config
                out[name] = {"feature_epochs": sorted(set(parse_ints(value, "--feature-epochs")))}
            elif name in OPTION_DICT_PARAMS:
                flag = _FLAGS[OPTION_DICT_PARAMS[name]]
                if sweeps:
                    fixed, swept = parse_sweep_options(value, flag)
                    sweep.update({f"{name}.{k}": v for k, v in swept.items()})
                else:
                    fixed = parse_options(value, flag)
                if fixed:
                    out[name] = fixed
            else:
                out[name] = value
        return out, sweep

    def check(self) -> None:
        """The checks of the execution options that typer cannot make."""
        if not math.isfinite(self.checkpoint_every):
            raise NLBenchError(f"--checkpoint-every must be a finite number of seconds, got {self.checkpoint_every} "
                               "(--no-checkpoint writes none)")
        if self.download and self.data_root is None:
            raise NLBenchError("--download needs --data-root (the folder to download into)")

    @property
    def checkpoint_seconds(self) -> float | None:
        """Seconds between checkpoints, ``None`` with ``--no-checkpoint``."""
        return None if self.no_checkpoint else self.checkpoint_every


def shared_options(after: str) -> Callable[[Callable], Callable]:
    """Add :data:`SHARED_PARAMS` to a typer command after its parameter ``after``; the command gets them as one
    :class:`SharedOptions` in its keyword ``shared``."""

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "shared"]
        at = [p.name for p in own].index(after) + 1
        clash = set(SHARED_NAMES) & {p.name for p in own}
        if clash:
            raise TypeError(f"{fn.__name__} declares shared options itself: {sorted(clash)}")
        params = [*own[:at], *SHARED_PARAMS, *own[at:]]
        field_names = [n for n in RUN_FIELDS if n not in PER_RUN]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(OPTION_DICT_PARAMS.get(name, name)) for name in field_names}
            shared = SharedOptions(preset=kwargs.pop("preset"), values=values,
                                   **{p.name: kwargs.pop(p.name) for p in EXECUTION_PARAMS})
            if shared.portable:  # before the command imports the harness or torch computes anything
                enable_portable()
            return fn(**kwargs, shared=shared)

        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
        return wrapper

    return decorate
