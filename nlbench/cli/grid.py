"""``nlbench grid``, ``nlbench leaderboard``, ``nlbench plot`` and ``nlbench results check``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nlbench.cli import app, console, fail, user_errors
from nlbench.cli.options import DEFAULT_RESULTS, DataRoot, SharedOptions, parse_value, shared_options, split_pair
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
@shared_options(after="name")
def grid(
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods, or 'all'.")] = None,
    noises: Annotated[str | None, typer.Option(help="Comma-separated noise specs, e.g. sym20,pairflip45.")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated training seeds (default 0).")] = None,
    grid_name: Annotated[str | None, typer.Option("--grid", help="A named grid of nlbench/grids.toml, or of the "
                                                                 "--config file (the options override its "
                                                                 "values).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A grid file of your own, in the format of "
                                                "nlbench/grids.toml (a file with one grid may leave out its \\[name] "
                                                "header); the options override its values.")] = None,
    name: Annotated[str | None, typer.Option(help="Name of the grid log (default: the grid's name, or one "
                                                  "derived from the configs).")] = None,
    sweep: Annotated[list[str] | None, typer.Option("--sweep", help="Sweep a config key, KEY=v1,v2,... "
                                                    "(repeatable), e.g. meta_size=100,500 or "
                                                    "method_options.alpha=0.3,1,3; see `nlbench table --by "
                                                    "KEY`.")] = None,
    workers: Annotated[int, typer.Option(help="Local parallel runs (processes).")] = 1,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address, or 'auto'.")] = None,
    cpus_per_run: Annotated[float, typer.Option(help="Ray: CPUs reserved per run.")] = 1.0,
    gpus_per_run: Annotated[float, typer.Option(help="Ray: GPUs reserved per run (fractions share a GPU).")] = 0.0,
    claim_ttl: Annotated[float, typer.Option(help="Seconds without heartbeat after which another host's claim "
                                                  "is stale.")] = 3600.0,
    dry_run: Annotated[bool, typer.Option(help="List the runs (each name ends with its config hash) and whether "
                                               "they are done; run nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (with --dry-run: the runs, "
                                                         "their config hashes and configs).")] = False,
    *,
    shared: SharedOptions,
) -> None:
    """Run a grid of settings, skipping those with a finished record; safe to run twice at once. Takes every
    protocol and method option of `nlbench run`, a grid of nlbench/grids.toml (--grid) or a grid file of your
    own (--config)."""
    from nlbench.benchmark.grid import (
        GridSpec,
        check_claim_ttl,
        check_executor_options,
        expand,
        load_grid,
        override,
        run_grid,
    )

    with user_errors():
        check_claim_ttl(claim_ttl)
        check_executor_options(workers, cpus_per_run, gpus_per_run)
        shared.check()
        settings, swept = shared.settings(sweeps=True)
        swept.update(parse_sweeps(sweep))
        identity = {"methods": split_list(methods, "methods"), "noises": split_list(noises, "noises"),
                    "seeds": split_ints(seeds, "seeds")}
        if config is not None or grid_name is not None:
            spec = load_grid(grid_name, config)
        elif identity["methods"] and identity["noises"]:
            spec = GridSpec(name="custom")
        else:
            raise NLBenchError("give --methods and --noises (comma-separated), or a grid with --grid NAME or "
                               "--config FILE")
        spec = override(spec, **identity, preset=shared.preset, settings=settings, sweep=swept)
        configs = expand(spec)
        if name is None:
            changed = any(v is not None for v in identity.values()) or shared.given() or sweep
            digest = hashlib.sha256(",".join(c.hash() for c in configs).encode()).hexdigest()[:8]
            name = f"{spec.name}-{digest}" if changed or spec.name == "custom" else spec.name
        if dry_run:
            print_dry_run(configs, spec, name, shared.results_dir, as_json)
            return
        ex = make_executor(executor, workers, ray_address, cpus_per_run, gpus_per_run)
        if shared.download:
            download_data(configs, shared.data_root)
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if _main_thread() else None
        try:  # with --json, stdout is the summary alone: progress lines go to stderr
            with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
                summary = run_grid(configs, shared.results_dir, ex, progress=shared.progress, name=name,
                                   data_root=shared.data_root, device=shared.device, claim_ttl=claim_ttl,
                                   log=lambda m: print(m, file=sys.stderr), force=shared.force,
                                   compile_model=shared.compile_model, checkpoint_every=shared.checkpoint_seconds)
        except KeyboardInterrupt as e:
            s = e.args[0] if e.args else None
            done = f"{s.finished} of {s.total} runs finished in this call" if s is not None else "interrupted"
            print(f"interrupted: {done}; claims released, rerun the same command to resume", file=sys.stderr)
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    if as_json:
        print(json.dumps(summary_dict(summary), indent=1, sort_keys=True))
    else:
        print(summary.line())
    if summary.errors and not (summary.done or summary.failed or summary.skipped):
        messages = {m for _, m in summary.errors}
        if len(messages) == 1:  # every run hit the same user error (missing data, ...): say it once
            raise fail(messages.pop())
    if summary.errors:
        raise typer.Exit(1)


def parse_sweeps(pairs: list[str] | None) -> dict[str, tuple]:
    """``--sweep KEY=v1,v2`` -> ``{KEY: (v1, v2)}`` (values JSON where they parse, else strings)."""
    out: dict[str, tuple] = {}
    for pair in pairs or []:
        key, text = split_pair(pair, "--sweep")
        values = tuple(parse_value(v.strip()) for v in text.split(",") if v.strip())
        if not values:
            raise NLBenchError(f"--sweep {pair!r} sweeps no value")
        out[key] = values
    return out


def _dotted(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def print_dry_run(configs: list, spec: Any, name: str, results_dir: Path, as_json: bool) -> None:
    """The runs of a grid, whether each is done, and (for a sweep) the swept values of each."""
    from nlbench.benchmark.records import find_record

    done = [find_record(results_dir, cfg.run_name()) is not None for cfg in configs]
    if as_json:
        runs = [{"run_name": cfg.run_name(), "config_hash": cfg.hash(), "done": d, "config": cfg.to_dict()}
                for cfg, d in zip(configs, done, strict=True)]
        print(json.dumps({"name": name, "runs": runs}, indent=1, sort_keys=True))
        return
    for cfg, d in zip(configs, done, strict=True):
        values = [(key, _dotted(cfg.to_dict(), key)) for key in spec.sweep]
        shown = "".join(f" {key}={json.dumps(v)}" for key, v in values if v is not None)
        print(f"{'done' if d else 'todo'} {cfg.run_name()}{shown}")
    print(f"grid {name}: {len(configs)} runs, {sum(done)} done, {len(configs) - sum(done)} to run")


def summary_dict(summary: Any) -> dict[str, Any]:
    """A :class:`GridSummary` as JSON-ready data."""
    return {"name": summary.name, "total": summary.total, "done": summary.done, "skipped": summary.skipped,
            "failed": summary.failed, "left_to_other": summary.left_to_other,
            "errors": [{"run_name": r, "message": m} for r, m in summary.errors],
            "wall_time_s": round(summary.wall_time_s, 3), "complete": summary.complete}


def download_data(configs: list, data_root: Path | None) -> None:
    """``--download``: fetch the data of every dataset the grid uses, once, before any run starts (workers
    must not race to download into one folder)."""
    from nlbench.datasets import load_dataset

    seen: set[tuple[str, str]] = set()
    for cfg in configs:
        key = (cfg.dataset, json.dumps(cfg.dataset_options, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            load_dataset(cfg.dataset, data_root, download=True, **cfg.dataset_options)


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
    column name), flags and the flattened config, the columns of `nlbench.load_records`. Text cells that a
    spreadsheet would run as a formula (starting with = + - @, a tab or a line break) get a leading ' (OWASP)."""
    import warnings

    from nlbench.api import load_records, records_csv
    from nlbench.benchmark.records import atomic_write_text

    with user_errors():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = load_records(results_dir)
        for w in caught:
            _warn(str(w.message))
        text = records_csv(df)  # formula cells (= + - @ ...) neutralised: the CSV opens safely in a spreadsheet
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
    duplicate config hashes, one per line on stdout; exit 1 if there are any, 0 if the folder is clean. Records
    made by an older version of their method are listed as warnings on stderr ("stale record") and counted in
    the last line: they are valid but superseded (a grid or run trains them again, `results verify` does not
    rerun them), so they leave the exit code as it is."""
    from nlbench.benchmark import verify as V
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
        stale = [f"{rec['_path']}: stale record, {why}" for rec in records
                 if (why := V.stale_reason(rec)) is not None]
    for line in lines:
        print(line)
    for line in stale:  # warnings go to stderr, as everywhere: stdout lists the problems alone
        _warn(line)
    more = f", {len(resumable)} resumable checkpoint(s)" if resumable else ""
    more += f", {len(stale)} stale (older method version; warning)" if stale else ""
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
    max_epochs: Annotated[int, typer.Option(min=1, max=1_000_000, help="Skip (and say so) records whose config "
                                            "asks for more epochs than this.")] = 200,
) -> None:
    """Rerun a random sample of records, each in a fresh process with its record's numerics (portable mode if the
    record was made in it, else the machine's native kernels) and thread count, and report, per record:
    bit-identical, different but within the seed spread of its cell, or outside it, and whether it was made in
    portable numerics; exit 1 if any is outside, or if a record's config cannot be trained by this nlbench
    (reported as such). Records made by an older version of their method are reported as stale and not rerun,
    records over --max-epochs as skipped. Nothing is written."""
    from nlbench.benchmark import verify as V
    from nlbench.benchmark.records import scan_records

    with user_errors():
        if not results_dir.is_dir():
            raise NLBenchError(f"results folder {results_dir} does not exist")
        records, problems = scan_records(results_dir)
        for p in problems:
            _warn(f"skipped {p.path}: {p.problem}")
        pool = [r for r in records if method is None or r["method"] == method]
        if not pool:
            raise NLBenchError(f"no valid records{'' if method is None else f' of method {method!r}'} "
                               f"in {results_dir}")
        current = [r for r in records if V.stale_line(r) is None]  # stale records widen no seed spread
        verdicts: list = []
        skipped = stale = unrunnable = 0
        for rec in V.sample(pool, sample, seed):
            why = V.stale_line(rec)
            if why is not None:
                stale += 1
            elif (why := V.refusal(rec, max_epochs)) is not None:
                skipped += 1
            elif (why := V.unrunnable(rec)) is not None:
                unrunnable += 1
            else:
                rerun = V.rerun(rec, data_root=data_root, device=device)
                verdicts.append(V.classify(rec, rerun, V.seed_spread(rec, current)))
                why = verdicts[-1].line()
            print(why, flush=True)
    print(V.summary_line(verdicts, skipped=skipped, stale=stale, unrunnable=unrunnable))
    if unrunnable or any(v.verdict == "outside" for v in verdicts):
        raise typer.Exit(1)
