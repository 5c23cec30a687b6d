"""``nlbench run``, ``nlbench list`` and ``nlbench noise show``."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nlbench.benchmark.config import RunConfig
from nlbench.cli import app, console, user_errors
from nlbench.errors import NLBenchError, did_you_mean

noise_app = typer.Typer(help="Inspect noise specs.", no_args_is_help=True)
app.add_typer(noise_app, name="noise")

DEFAULT_RESULTS = Path("results")


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``["alpha=0.1", "mode=direct"]`` -> ``{"alpha": 0.1, "mode": "direct"}`` (values parsed as JSON if they
    can be, else kept as strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise NLBenchError(f"option {pair!r} must look like key=value")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _default(name: str) -> str:
    """``[default: X]`` for a run option, read from :class:`RunConfig` (the one source of the defaults)."""
    return f"\\[default: {RUN_DEFAULTS[name]:g}]" if isinstance(RUN_DEFAULTS[name], float) else \
        f"\\[default: {RUN_DEFAULTS[name]}]"


RUN_KEYS = [f.name for f in fields(RunConfig)]
RUN_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}

DataRoot = Annotated[Path | None, typer.Option(help="Folder with the data files (else $NLBENCH_DATA_ROOT, "
                                                    "else system locations).", envvar="NLBENCH_DATA_ROOT")]


@app.command()
def run(
    method: Annotated[str | None, typer.Option(help=f"Method name (see `nlbench list methods`) "
                                                    f"{_default('method')}.")] = None,
    noise: Annotated[str | None, typer.Option(help="Noise spec, e.g. sym40, pairflip45, idn40, clean.")] = None,
    preset: Annotated[str | None, typer.Option(help="Named protocol (see `nlbench list presets`); explicit "
                                                    "options override it.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of run settings (RunConfig keys, "
                                                "and `preset`); explicit options override it, it overrides "
                                                "the preset.")] = None,
    dataset: Annotated[str | None, typer.Option(help=f"Dataset name {_default('dataset')}.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name \\[default: the dataset's].")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help=f"Training seed {_default('seed')}.")] = None,
    noise_seed: Annotated[int | None, typer.Option(min=0, help="Noise seed \\[default: the training seed].")] = None,
    epochs: Annotated[int | None, typer.Option(help=f"Training epochs {_default('epochs')}.")] = None,
    batch_size: Annotated[int | None, typer.Option(help=f"Batch size {_default('batch_size')}.")] = None,
    lr: Annotated[float | None, typer.Option(help=f"Peak learning rate, SGD with momentum {_default('lr')}.")] = None,
    momentum: Annotated[float | None, typer.Option(help=f"SGD momentum {_default('momentum')}.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help=f"Weight decay {_default('weight_decay')}.")] = None,
    schedule: Annotated[str | None, typer.Option(help=f"cosine, step or constant {_default('schedule')}.")] = None,
    milestones: Annotated[str | None, typer.Option(help="Step-schedule epochs, comma-separated.")] = None,
    meta_size: Annotated[int | None, typer.Option(help="Clean meta-set size, carved before noise "
                                                       f"{_default('meta_size')}.")] = None,
    val_size: Annotated[int | None, typer.Option(help=f"Noisy validation split size {_default('val_size')}.")] = None,
    augment: Annotated[bool | None, typer.Option(help="Random crop + flip on the device.")] = None,
    opt: Annotated[list[str] | None, typer.Option("--opt", help="Method option key=value (repeatable).")] = None,
    data_opt: Annotated[list[str] | None, typer.Option("--data-opt", help="Dataset option key=value.")] = None,
    feature_epochs: Annotated[str | None, typer.Option(help="Store a 2-D PCA view of penultimate features at these "
                                                           "epochs, e.g. 0,1,3 (0 = before training); see "
                                                           "`nlbench plot features`.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where records go (records land in DIR/runs/).")] = DEFAULT_RESULTS,
    data_root: DataRoot = None,
    download: Annotated[bool, typer.Option(help="Download missing data (needs internet).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (GPU).")] = False,
    force: Annotated[bool, typer.Option(help="Rerun even if a finished record exists.")] = False,
    checkpoint_every: Annotated[float, typer.Option(min=0, help="Seconds between end-of-epoch checkpoints in "
                                                        "DIR/checkpoints (0: every epoch); a killed run resumes "
                                                        "from its last one.")] = 60.0,
    no_checkpoint: Annotated[bool, typer.Option("--no-checkpoint", help="Write no checkpoints.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on a terminal; off a terminal, one line per "
                                                "epoch.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record as JSON.")] = False,
) -> None:
    """Train one setting and write its record (resumes: a finished record is reused unless --force)."""
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train

    with user_errors():
        given = dict(method=method, noise=noise, dataset=dataset, model=model, seed=seed, noise_seed=noise_seed,
                     epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                     schedule=schedule, milestones=parse_ints(milestones, "--milestones"), meta_size=meta_size,
                     val_size=val_size, augment=augment, method_options=parse_options(opt),
                     dataset_options=parse_options(data_opt))
        if feature_epochs is not None:  # sorted and unique, so 3,0,1 and 0,1,3 are the same config
            given["record_options"] = {"feature_epochs": sorted(set(parse_ints(feature_epochs, "--feature-epochs")))}
        from_file = read_run_config(config) if config is not None else {}
        preset = preset if preset is not None else from_file.pop("preset", None)
        from_file.pop("preset", None)
        cfg = RunConfig.from_preset(preset, **merge_settings(from_file, {k: v for k, v in given.items()
                                                                        if v is not None}))
        if not math.isfinite(checkpoint_every):
            raise NLBenchError(f"--checkpoint-every must be a finite number of seconds, got {checkpoint_every} "
                               "(--no-checkpoint writes none)")
        if download and data_root is None:
            raise NLBenchError("--download needs --data-root (the folder to download into)")
        try:  # with --json, stdout is the record alone: per-epoch progress lines go to stderr
            with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                rec = train(cfg, data_root=data_root, device=device, results_dir=results_dir, progress=progress,
                            resume=not force, download=download, compile_model=compile_model,
                            checkpoint_every=None if no_checkpoint else checkpoint_every)
        except KeyboardInterrupt:  # records are written whole or not at all: say so, and how to go on
            print("interrupted: no record written; rerun the same command to go on from its last checkpoint",
                  file=sys.stderr)
            raise typer.Exit(130) from None
    if as_json:
        print(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, indent=1, sort_keys=True))
    else:
        print_summary(rec)
    if rec["status"] != "ok":  # exit 1 with --json too, so scripts can tell a diverged run from a finished one
        raise typer.Exit(1)


#: Largest --config file read (a run's settings are a few hundred bytes).
MAX_CONFIG_BYTES = 1 << 20


def read_run_config(path: Path) -> dict[str, Any]:
    """The settings of a ``--config`` TOML file: RunConfig keys (``milestones`` as a list) and ``preset``.
    Unknown keys are refused with the valid ones and a close match."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise NLBenchError(f"cannot read --config {path}: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise NLBenchError(f"--config {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise NLBenchError(f"--config {path} is not valid TOML: {e}") from None
    valid = sorted(set(RUN_KEYS) | {"preset"})
    for key in table:
        if key not in valid:
            hint = did_you_mean(key, valid, cutoff=0.6)
            raise NLBenchError(f"--config {path}: unknown key {key!r}.{hint} Valid: {', '.join(valid)}")
    if isinstance(table.get("milestones"), list):
        table["milestones"] = tuple(table["milestones"])
    return table


def merge_settings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; option dicts (``method_options``, ...) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


def parse_ints(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"40,80"`` -> ``(40, 80)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise NLBenchError(f"{option} must be comma-separated integers, got {text!r}") from None


def print_summary(rec: dict) -> None:
    """A short human summary of one record."""
    tag = " [ORACLE]" if rec.get("oracle") else ""
    table = Table(title=f"{rec['method']}{tag} | {rec['dataset']} {rec['noise']} | seed {rec['seed']}",
                  show_header=True)
    f = rec.get("final", {})
    done = f.get("epochs_done", len(rec["history"]))
    tail = min(5, done) if done else 5  # final.last5_acc averages the last 5 epochs, or all of a shorter run
    for col in ("status", "realised noise", "last acc", "best acc (optimistic)", f"mean last {tail}", "epochs",
                "wall s"):
        table.add_column(col, justify="right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    rate = (rec.get("noise_report") or {}).get("realised_rate")
    table.add_row(rec["status"], "—" if rate is None else f"{rate:.4f}", pct(f.get("last_acc")),
                  pct(f.get("best_acc")), pct(f.get("last5_acc")), str(len(rec["history"])),
                  f"{rec['wall_time_s']:.1f}")
    console.print(table)
    if rec.get("resumed"):
        console.print("(finished record reused; pass --force to rerun)")
    if rec.get("error"):
        console.print(f"failed: {rec['error']['reason']}")
    if rec.get("path") or rec.get("_path"):
        console.print(f"record: {rec.get('path') or rec.get('_path')}")


class Kind(StrEnum):
    methods = "methods"
    noises = "noises"
    datasets = "datasets"
    models = "models"
    presets = "presets"


@app.command("list")
def list_(kind: Annotated[Kind, typer.Argument(help="What to list.")] = Kind.methods) -> None:
    """List methods (with what each reads beyond the noisy pool), noises, datasets, models or presets."""
    from rich.markup import escape

    with user_errors():
        rows = registry_rows(kind.value)
    table = Table(show_header=True)
    table.add_column(kind.value[:-1], no_wrap=True)
    table.add_column("description")
    if kind is Kind.methods:
        table.add_column("reads", no_wrap=True)
    for row in rows:  # descriptions hold matrix indices such as T[i,i]: never rich markup
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)


def _first_line(obj: Any) -> str:
    """An object's docstring's first paragraph as one line of plain text (reST unwrapped, spaces collapsed)."""
    import inspect

    from nlbench.methods.base import plain_summary

    return plain_summary(inspect.getdoc(obj) or "")


def method_flags(cls: Any) -> str:
    """What a method reads beyond the noisy pool, for ``nlbench list methods``."""
    flags = [label for attr, label in (("uses_meta", "meta set"), ("uses_noise_rate", "noise rate [NOISE RATE]"),
                                       ("oracle", "ground truth [ORACLE]")) if getattr(cls, attr, False)]
    return ", ".join(flags) or "-"


def _method_rows() -> list[tuple[str, ...]]:
    from nlbench.methods import METHODS, list_methods

    rows = []
    for name in list_methods():
        cls = METHODS.get(name)
        aliases = METHODS.aliases(name)
        summary = " ".join((cls.summary or _first_line(cls)).split())
        rows.append((name, summary + (f" (alias: {', '.join(aliases)})" if aliases else ""), method_flags(cls)))
    return rows


def _noise_rows() -> list[tuple[str, ...]]:
    import nlbench.datasets  # noqa: F401  (datasets register the human label sets they supply)
    from nlbench.noise import NOISES, list_noises

    return [(n, _first_line(NOISES.get(n.removesuffix("NN")).generate)) for n in list_noises()]


def _preset_rows() -> list[tuple[str, ...]]:
    from nlbench.benchmark.config import PRESETS

    return [(n, ", ".join(f"{k}={v}" for k, v in PRESETS.get(n).items())) for n in PRESETS.list()]


def _dataset_rows() -> list[tuple[str, ...]]:
    from nlbench.datasets import DATASETS

    return [(n, _first_line(DATASETS.get(n))) for n in DATASETS.list()]


def _model_rows() -> list[tuple[str, ...]]:
    from nlbench.models import MODELS

    return [(n, _first_line(MODELS.get(n))) for n in MODELS.list()]


#: registry kind (as ``nlbench list`` names it) -> how to list it
REGISTRY_ROWS: dict[str, Callable[[], list[tuple[str, ...]]]] = {
    "methods": _method_rows,
    "noises": _noise_rows,
    "presets": _preset_rows,
    "datasets": _dataset_rows,
    "models": _model_rows,
}


def registry_rows(kind: str) -> list[tuple[str, ...]]:
    """(name, one-line description) for every entry of a registry; methods add what they read
    (:func:`method_flags`)."""
    return REGISTRY_ROWS[kind]()


@noise_app.command("show")
def noise_show(
    spec: Annotated[str, typer.Argument(help="Noise spec, e.g. pairflip40.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "fashion-mnist",
    seed: Annotated[int, typer.Option(min=0, help="Noise seed.")] = 0,
    meta_size: Annotated[int, typer.Option(help="Meta set carved out before noise, as in a run.")] = 1000,
    data_root: DataRoot = None,
    data_opt: Annotated[list[str] | None, typer.Option("--data-opt", help="Dataset option key=value.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Apply a noise spec to a dataset's training pool and print T with the realised rates."""
    import numpy as np

    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import noisy_pool
    from nlbench.datasets import load_dataset

    with user_errors():
        cfg = RunConfig(noise=spec, dataset=dataset, seed=seed, noise_seed=seed, meta_size=meta_size, epochs=1,
                        model="mlp", dataset_options=parse_options(data_opt))
        ds = load_dataset(dataset, data_root, **cfg.dataset_options)
        report = noisy_pool(cfg, ds).noise_report
    if as_json:
        print(json.dumps({"spec": report["spec"], "dataset": dataset, "seed": seed, "n": report["n"],
                          "realised_rate": report["realised_rate"], "per_class_rate": report["per_class_rate"],
                          "transition_matrix": report["transition_matrix"],
                          "nominal_transition_matrix": report.get("nominal_transition_matrix")}, indent=1))
        return
    T = np.asarray(report["transition_matrix"])
    table = Table(title=f"{report['spec']} on {dataset} (noise seed {seed}): realised T[true, noisy]")
    table.add_column("true \\ noisy")
    for j in range(T.shape[1]):
        table.add_column(str(j), justify="right")
    table.add_column("rate", justify="right")
    for i, row in enumerate(T):
        table.add_row(str(i), *(f"{v:.3f}" if v else "." for v in row), f"{report['per_class_rate'][i]:.3f}")
    console.print(table)
    console.print(f"realised rate: {report['realised_rate']:.4f} over {report['n']} pool samples")
