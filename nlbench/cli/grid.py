"""``nlbench grid``, ``nlbench leaderboard``, ``nlbench plot`` and ``nlbench results check``."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from nlbench.cli import app, console, fail, user_errors
from nlbench.cli.core import DEFAULT_RESULTS, DataRoot, parse_options
from nlbench.errors import NLBenchError

results_app = typer.Typer(help="Inspect the results folder.", no_args_is_help=True)
app.add_typer(results_app, name="results")
# `nlbench plot` alone draws every plot of a results folder; `nlbench plot features RECORD` draws one record.
plot_app = typer.Typer()
app.add_typer(plot_app, name="plot")


def split_list(value: str | None, what: str) -> tuple[str, ...] | None:
    """``"a, b,c"`` -> ``("a", "b", "c")``; ``None`` stays ``None``; an empty list is a user error."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise NLBenchError(f"--{what} needs at least one comma-separated value")
    return items


def split_ints(value: str | None, what: str) -> tuple[int, ...] | None:
    items = split_list(value, what)
    if items is None:
        return None
    try:
        out = tuple(int(v) for v in items)
    except ValueError:
        raise NLBenchError(f"--{what} must be comma-separated integers, got {value!r}") from None
    if any(v < 0 for v in out):
        raise NLBenchError(f"--{what} must be non-negative, got {value!r}")
    return out


def make_executor(kind: str, workers: int, ray_address: str | None, cpus_per_run: float, gpus_per_run: float):
    """The executor named by ``--executor``; Ray is imported only when asked for."""
    from nlbench.benchmark.grid import LocalExecutor

    if kind == "local":
        return LocalExecutor(workers)
    if kind != "ray":
        raise NLBenchError(f"--executor must be local or ray, got {kind!r}")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise NLBenchError("--executor ray needs Ray: pip install 'nlbench[ray]'") from None
    try:
        from nlbench.benchmark.ray_executor import RayExecutor
    except ImportError as e:
        raise NLBenchError(f"the Ray executor is not available: {e}") from None
    return RayExecutor(address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)


def _sigterm_as_interrupt(signum, frame):  # a scheduler's SIGTERM cleans up like Ctrl-C
    raise KeyboardInterrupt


@app.command()
def grid(
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods, or 'all'.")] = None,
    noises: Annotated[str | None, typer.Option(help="Comma-separated noise specs, e.g. sym20,pairflip45.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated training seeds (default 0).")] = None,
    grid_name: Annotated[str | None, typer.Option("--grid", help="A named grid from nlbench/grids.toml "
                                                                 "(the options above override its fields).")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the grid log (default: the grid's name, or one "
                                                  "derived from the configs).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default fashion-mnist).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the dataset's).")] = None,
    meta_size: Annotated[int | None, typer.Option(help="Clean meta-set size.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    data_opt: Annotated[list[str] | None, typer.Option("--data-opt", help="Dataset option key=value.")] = None,
    workers: Annotated[int, typer.Option(help="Local parallel runs (processes).")] = 1,
    results_dir: Annotated[Path, typer.Option(help="Where records go (DIR/runs/).")] = DEFAULT_RESULTS,
    data_root: DataRoot = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address, or 'auto'.")] = None,
    cpus_per_run: Annotated[float, typer.Option(help="Ray: CPUs reserved per run.")] = 1.0,
    gpus_per_run: Annotated[float, typer.Option(help="Ray: GPUs reserved per run (fractions share a GPU).")] = 0.0,
    claim_ttl: Annotated[float, typer.Option(help="Seconds without heartbeat after which another host's claim "
                                                  "is stale.")] = 3600.0,
    dry_run: Annotated[bool, typer.Option(help="List the runs and whether they are done; run nothing.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on a terminal.")] = True,
) -> None:
    """Run a grid of settings, skipping those with a finished record; safe to run twice at once."""
    from nlbench.benchmark.grid import GridSpec, check_claim_ttl, check_executor_options, expand, load_grid, run_grid
    from nlbench.benchmark.records import find_record

    with user_errors():
        check_claim_ttl(claim_ttl)
        check_executor_options(workers, cpus_per_run, gpus_per_run)
        overrides = {"methods": split_list(methods, "methods"), "noises": split_list(noises, "noises"),
                     "seeds": split_ints(seeds, "seeds"), "dataset": dataset, "epochs": epochs, "model": model,
                     "meta_size": meta_size, "batch_size": batch_size, "lr": lr}
        given = {k: v for k, v in overrides.items() if v is not None}
        data_options = parse_options(data_opt)
        if grid_name is not None:
            spec = load_grid(grid_name)
            for key, value in given.items():
                setattr(spec, key, value)
            if data_options:
                spec.overrides = {**spec.overrides, "dataset_options": data_options}
        else:
            if not (given.get("methods") and given.get("noises")):
                raise NLBenchError("give --methods and --noises (comma-separated), or a named grid with --grid")
            spec = GridSpec(name="custom", dataset=given.pop("dataset", "fashion-mnist"),
                            methods=given.pop("methods"), noises=given.pop("noises"), seeds=given.pop("seeds", (0,)),
                            overrides={"dataset_options": data_options} if data_options else {}, **given)
        configs = expand(spec)
        if name is None:
            digest = hashlib.sha256(",".join(c.hash() for c in configs).encode()).hexdigest()[:8]
            name = spec.name if grid_name and not given and not data_options else f"{spec.name}-{digest}"
        if dry_run:
            for cfg in configs:
                done = find_record(results_dir, cfg.run_name()) is not None
                print(f"{'done' if done else 'todo'} {cfg.run_name()}")
            print(f"grid {name}: {len(configs)} runs")
            return
        ex = make_executor(executor, workers, ray_address, cpus_per_run, gpus_per_run)
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if _main_thread() else None
        try:
            summary = run_grid(configs, results_dir, ex, progress=progress, name=name, data_root=data_root,
                               device=device, claim_ttl=claim_ttl, log=lambda m: print(m, file=sys.stderr))
        except KeyboardInterrupt as e:
            s = e.args[0] if e.args else None
            done = f"{s.finished} of {s.total} runs finished in this call" if s is not None else "interrupted"
            print(f"interrupted: {done}; claims released, rerun the same command to resume", file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    print(summary.line())
    if summary.errors and not (summary.done or summary.failed or summary.skipped):
        messages = {m for _, m in summary.errors}
        if len(messages) == 1:  # every run hit the same user error (missing data, ...): say it once
            raise fail(messages.pop())
    if summary.errors:
        raise typer.Exit(1)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _load(results_dir: Path):
    from nlbench.benchmark.grid import read_grid_logs
    from nlbench.benchmark.records import scan_records

    if not results_dir.is_dir():
        raise NLBenchError(f"results folder {results_dir} does not exist")
    records, problems = scan_records(results_dir)
    for p in problems:
        _warn(f"skipped {p.path}: {p.problem}")
    logs, bad_logs = read_grid_logs(results_dir)
    for path, problem in bad_logs:
        _warn(f"skipped {path}: {problem}")
    return records, logs


@app.command()
def leaderboard(
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
    out: Annotated[Path, typer.Option(help="Markdown file to write ('-' for stdout).")] = Path("leaderboard.md"),
    plots_dir: Annotated[Path | None, typer.Option(help="Where the plots are (default DIR/plots), for the "
                                                        "links.")] = None,
    readme: Annotated[Path, typer.Option(help="README with the noise definitions, for the links.")] = Path(
        "README.md"),
) -> None:
    """Regenerate the leaderboard from the records; bad record files are reported and skipped."""
    from nlbench.benchmark.leaderboard import render_leaderboard
    from nlbench.benchmark.records import atomic_write_text

    with user_errors():
        records, logs = _load(results_dir)
        base = Path.cwd() if str(out) == "-" else out.parent.resolve()

        def rel(p: Path) -> str:  # links relative to where the Markdown lives
            return Path(os.path.relpath(p.resolve(), base)).as_posix()

        plots = plots_dir or results_dir / "plots"
        missing: list[str] = []

        def plot_exists(name: str) -> bool:  # link only plots that are there; count the others for the hint
            if (plots / name).is_file():
                return True
            missing.append(name)
            return False

        text = render_leaderboard(records, logs, plots_dir=rel(plots), readme=rel(readme), plot_exists=plot_exists)
        if str(out) == "-":
            sys.stdout.write(text)
            return
        atomic_write_text(out, text)
    console.print(f"leaderboard of {len(records)} records written to {out}")
    if missing:
        console.print(f"{len(set(missing))} plot(s) not in {plots} are not linked: draw them with `nlbench plot "
                      f"--results-dir {results_dir} --out-dir {plots}`, then run this command again", markup=False)


@app.command()
def table(
    by: Annotated[str, typer.Option(help="Config key the sweep varies, e.g. meta_size or method_options.alpha.")],
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
    out: Annotated[Path, typer.Option(help="Markdown file to write ('-' for stdout).")] = Path("-"),
    title: Annotated[str | None, typer.Option(help="Heading of the Markdown file.")] = None,
) -> None:
    """Tabulate a sweep: accuracy, weight filtering quality and cost per value of one config key, per noise
    and method (records that differ in other keys go to separate tables)."""
    from nlbench.benchmark.records import atomic_write_text
    from nlbench.benchmark.sweep import render_sweep

    with user_errors():
        records, _ = _load(results_dir)
        text = render_sweep(records, by, title)
        if str(out) == "-":
            sys.stdout.write(text)
            return
        atomic_write_text(out, text)
    console.print(f"sweep table of {results_dir} by {by} written to {out}")


@plot_app.callback(invoke_without_command=True)
def plot(
    ctx: typer.Context,
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
    out_dir: Annotated[Path | None, typer.Option(help="Where the PNGs go (default DIR/plots).")] = None,
) -> None:
    """Accuracy curves, weight trajectories and critical-difference diagrams from the records (or, with
    `features RECORD`, one run's feature view)."""
    if ctx.invoked_subcommand is not None:
        return
    from nlbench.benchmark.plots import plot_all

    with user_errors():
        records, _ = _load(results_dir)
        paths = plot_all(records, out_dir or results_dir / "plots")
    console.print(f"{len(paths)} plots written to {out_dir or results_dir / 'plots'}")


@plot_app.command("features")
def plot_features_cmd(
    record: Annotated[Path, typer.Argument(help="A run record (JSON) made with --feature-epochs.")],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: <record name>.features.png in the "
                                                  "current folder).")] = None,
) -> None:
    """Draw a record's feature view: one PCA panel per stored epoch, clean samples as dots and noisy ones as
    crosses, coloured by true class."""
    from nlbench.benchmark.features import plot_features
    from nlbench.benchmark.plots import safe_file_name
    from nlbench.benchmark.records import load_record

    with user_errors():
        try:
            rec = load_record(record)
        except ValueError as e:
            raise NLBenchError(f"cannot read record {record}: {e}") from None
        path = plot_features(rec, out or Path(safe_file_name(f"{record.stem}.features.png")))
    console.print(f"feature view written to {path}")


@results_app.command("export")
def results_export(
    csv: Annotated[Path, typer.Option("--csv", help="CSV file to write ('-' for stdout).")],
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
) -> None:
    """Write every valid record as one CSV row: what ran, final metrics and noise in percent (unit in the
    column name), flags and the flattened config, the columns of `nlbench.load_records`."""
    import warnings

    from nlbench.api import load_records
    from nlbench.benchmark.records import atomic_write_text

    with user_errors():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = load_records(results_dir)
        for w in caught:
            _warn(str(w.message))
        text = df.to_csv(index=False)
        if str(csv) == "-":
            sys.stdout.write(text)
            return
        atomic_write_text(csv, text)
    console.print(f"{len(df)} records of {results_dir} written to {csv}", markup=False)


@results_app.command("check")
def results_check(
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
    claim_ttl: Annotated[float, typer.Option(help="Claim staleness TTL in seconds (as for grid).")] = 3600.0,
) -> None:
    """List unreadable or schema-breaking records, orphaned temp files and checkpoints, stale claims and
    duplicate config hashes; exit 1 if there are any, 0 if the folder is clean."""
    from nlbench.benchmark.checkpoint import scan_checkpoints
    from nlbench.benchmark.grid import check_claim_ttl, read_grid_logs, stale_claims
    from nlbench.benchmark.records import orphaned_temps, scan_records

    with user_errors():
        check_claim_ttl(claim_ttl)
        if not results_dir.is_dir():
            raise NLBenchError(f"results folder {results_dir} does not exist")
        records, problems = scan_records(results_dir)
        lines = [f"{p.path}: {p.problem}" for p in problems]
        lines += [f"{p}: stale claim" for p in stale_claims(results_dir, claim_ttl)]
        lines += [f"{p}: {why}" for p, why in read_grid_logs(results_dir)[1]]
        grids = results_dir / "grids"
        if grids.is_dir():
            lines += [f"{p}: orphaned temp file" for p in orphaned_temps(grids)]
        resumable, ckpt_problems = scan_checkpoints(results_dir, {r["run_name"] for r in records})
        lines += [f"{p}: {why}" for p, why in ckpt_problems]
    for line in lines:
        print(line)
    more = f", {len(resumable)} resumable checkpoint(s)" if resumable else ""
    print(f"{len(records)} valid records{more}, {len(lines)} problem(s) in {results_dir}")
    if lines:
        raise typer.Exit(1)


@results_app.command("verify")
def results_verify(
    sample: Annotated[int, typer.Option(min=1, max=100_000, help="How many records to rerun.")] = 5,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the draw of records.")] = 0,
    method: Annotated[str | None, typer.Option(help="Only records of this method.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Folder with the records (DIR/runs/).")] = DEFAULT_RESULTS,
    data_root: DataRoot = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
) -> None:
    """Rerun a random sample of records (each with the thread count its record states) and report, per record:
    bit-identical, different but within the seed spread of its cell, or outside it; exit 1 if any is outside.
    Nothing is written."""
    import torch

    from nlbench.benchmark import verify as V
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train
    from nlbench.benchmark.records import scan_records

    with user_errors():
        if not results_dir.is_dir():
            raise NLBenchError(f"results folder {results_dir} does not exist")
        records, _ = scan_records(results_dir)
        pool = [r for r in records if method is None or r["method"] == method]
        if not pool:
            raise NLBenchError(f"no valid records{'' if method is None else f' of method {method!r}'} "
                               f"in {results_dir}")
        verdicts, threads_before = [], torch.get_num_threads()
        try:
            for rec in V.sample(pool, sample, seed):
                threads = rec["env"].get("threads")
                torch.set_num_threads(threads if isinstance(threads, int) and threads >= 1 else threads_before)
                rerun = train(RunConfig.from_dict(rec["config"]), data_root=data_root, device=device,
                              results_dir=None, checkpoint_every=None)
                verdicts.append(V.classify(rec, rerun, V.seed_spread(rec, records)))
                print(verdicts[-1].line(), flush=True)
        finally:
            torch.set_num_threads(threads_before)
    print(V.summary_line(verdicts))
    if any(v.verdict == "outside" for v in verdicts):
        raise typer.Exit(1)
