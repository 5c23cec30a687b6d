"""``nlbench run``, ``nlbench list`` and ``nlbench noise show``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nlbench.benchmark.config import RunConfig
from nlbench.cli import app, console, user_errors
from nlbench.cli.options import (  # re-exported: the options run and grid share live there
    DEFAULT_RESULTS,
    RUN_DEFAULTS,
    DataRoot,
    SharedOptions,
    parse_ints,
    parse_options,
    per_run_option,
    shared_options,
)
from nlbench.cli.options import default_text as _default  # noqa: F401

noise_app = typer.Typer(help="Inspect noise specs.", no_args_is_help=True)
app.add_typer(noise_app, name="noise")

__all__ = ["DEFAULT_RESULTS", "RUN_DEFAULTS", "RUN_KEYS", "DataRoot", "merge_settings", "parse_ints", "parse_options",
           "read_run_config", "registry_rows"]

RUN_KEYS = [f.name for f in fields(RunConfig)]
MethodOption, NoiseOption, SeedOption = (per_run_option(n) for n in ("method", "noise", "seed"))


@app.command()
@shared_options(after="config")
def run(
    method: MethodOption = None,
    noise: NoiseOption = None,
    seed: SeedOption = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of run settings (RunConfig keys, "
                                                "and `preset`); explicit options override it, it overrides "
                                                "the preset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole record as JSON.")] = False,
    *,
    shared: SharedOptions,
) -> None:
    """Train one setting and write its record (resumes: a finished record is reused unless --force)."""
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train

    with user_errors():
        given, _ = shared.settings()
        given.update({k: v for k, v in dict(method=method, noise=noise, seed=seed).items() if v is not None})
        from_file = read_run_config(config) if config is not None else {}
        preset = shared.preset if shared.preset is not None else from_file.pop("preset", None)
        from_file.pop("preset", None)
        cfg = RunConfig.from_preset(preset, **merge_settings(from_file, given))
        shared.check()
        try:  # with --json, stdout is the record alone: per-epoch progress lines go to stderr
            with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                rec = train(cfg, data_root=shared.data_root, device=shared.device, results_dir=shared.results_dir,
                            progress=shared.progress, resume=not shared.force, download=shared.download,
                            compile_model=shared.compile_model, checkpoint_every=shared.checkpoint_seconds)
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


def read_run_config(path: Path) -> dict[str, Any]:
    """The settings of a ``--config`` TOML file: RunConfig keys (``milestones`` as a list) and ``preset``, read as
    untrusted input; unknown keys are refused with the valid ones and a close match
    (:func:`nlbench.benchmark.config.load_config_file`)."""
    from nlbench.benchmark.config import load_config_file

    return load_config_file(path)


def merge_settings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; option dicts (``method_options``, ...) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


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
