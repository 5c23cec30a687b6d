"""The grid driver, :func:`run_grid`.

It skips runs whose valid record exists, claims the rest (:mod:`nlbench.benchmark.grid.claims`), writes each
returned record atomically, releases the claim, and keeps a grid log with the measured wall time under
``<results_dir>/grids/<name>.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nlbench.benchmark.checkpoint import checkpoint_path, checkpoints_dir
from nlbench.benchmark.checkpoint import remove as remove_checkpoint
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.grid.claims import DEFAULT_CLAIM_TTL, Claims, check_claim_ttl, remove_stale_claim
from nlbench.benchmark.grid.executors import Executor
from nlbench.benchmark.progress import ProgressBar
from nlbench.benchmark.records import (
    atomic_write_text,
    find_record,
    orphaned_temps,
    read_json_file,
    runs_dir,
    write_record,
)
from nlbench.errors import NLBenchError

GRIDS_DIR = "grids"
#: largest grid log read (a log lists one 12-digit hash per run)
MAX_GRID_LOG_BYTES = 16 * 2**20


@dataclass
class GridSummary:
    """What one :func:`run_grid` invocation did. ``done``/``failed`` count records written now (status ok /
    failed); ``skipped`` had a record already; ``left_to_other`` were claimed by another live driver;
    ``errors`` are runs that produced no record, as (run name, message)."""

    name: str
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    left_to_other: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    wall_time_s: float = 0.0
    interrupted: bool = False
    complete: bool = False

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def line(self) -> str:
        """One line for logs and tests: ``grid NAME: 3 done, 1 skipped, 0 failed, 0 errors, ...``."""
        other = f", {self.left_to_other} runs left to another process" if self.left_to_other else ""
        return (f"grid {self.name}: {self.done} done, {self.skipped} skipped, {self.failed} failed, "
                f"{len(self.errors)} errors{other}, wall {self.wall_time_s:.1f} s")


def grid_log_path(results_dir: str | os.PathLike, name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)
    return Path(results_dir) / GRIDS_DIR / f"{safe}.json"


def read_grid_logs(results_dir: str | os.PathLike) -> tuple[list[dict], list[tuple[Path, str]]]:
    """Every readable grid log under ``results_dir`` (sorted by name) and the unreadable ones."""
    folder = Path(results_dir) / GRIDS_DIR
    logs, bad = [], []
    if not folder.is_dir():
        return logs, bad
    for path in sorted(folder.glob("*.json")):
        try:  # never blocks (a FIFO) and never reads without bound
            log = read_json_file(path, max_bytes=MAX_GRID_LOG_BYTES)
            if not isinstance(log, dict) or not isinstance(log.get("config_hashes"), list):
                raise ValueError("not a grid log")
        except ValueError as e:
            bad.append((path, f"unreadable grid log: {str(e).removeprefix('unreadable: ')}"))
            continue
        logs.append(log)
    return sorted(logs, key=lambda g: str(g.get("name"))), bad


def _update_grid_log(results_dir: Path, name: str, configs: list[RunConfig], summary: GridSummary,
                     started: str, finished: str) -> None:
    # Read-modify-write without a lock: two drivers finishing the same grid at once may lose one invocation's
    # time from the cumulative total (never a record); the last completing invocation's time stays exact.
    path = grid_log_path(results_dir, name)
    old: dict = {}
    with contextlib.suppress(ValueError):  # a FIFO or garbage in its place is replaced, never waited on
        old = read_json_file(path, max_bytes=MAX_GRID_LOG_BYTES)
        old = old if isinstance(old, dict) else {}
    hashes = [c.hash() for c in configs]
    same_grid = old.get("config_hashes") == hashes
    log = {
        "name": name, "n_runs": len(configs), "config_hashes": hashes,
        "cumulative_wall_time_s": (old.get("cumulative_wall_time_s", 0.0) if same_grid else 0.0)
        + summary.wall_time_s,
        "invocations": (old.get("invocations", 0) if same_grid else 0) + 1,
        "complete": summary.complete,
    }
    # The measured time is that of the last invocation that completed the grid by running something: a
    # later call that only skips finished runs would otherwise overwrite it with ~0 s.
    if summary.complete and summary.finished:
        log.update(started=started, finished=finished, wall_time_s=summary.wall_time_s,
                   runs_in_last_invocation=summary.finished)
    elif same_grid:
        for key in ("started", "finished", "wall_time_s", "runs_in_last_invocation"):
            if key in old:
                log[key] = old[key]
    atomic_write_text(path, json.dumps(log, indent=1, sort_keys=True) + "\n")


def payload_for(cfg: RunConfig, data_root: str | os.PathLike | None = None, device: str = "auto",
                threads: int | None = None, checkpoint_dir: str | os.PathLike | None = None, *,
                checkpoint_every: float = 60.0, resume: bool = True, compile_model: bool = False) -> dict:
    """The :func:`run_one` payload of ``cfg``."""
    return {"config": cfg.to_dict(), "data_root": None if data_root is None else str(data_root),
            "device": device, "threads": threads,
            "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
            "checkpoint_every": checkpoint_every, "resume": resume, "compile_model": compile_model}


def run_grid(configs: list[RunConfig], results_dir: str | os.PathLike, executor: Executor, *,
             progress: bool = True, name: str = "grid", data_root: str | os.PathLike | None = None,
             device: str = "auto", claim_ttl: float = DEFAULT_CLAIM_TTL,
             log: Callable[[str], None] | None = None, force: bool = False, compile_model: bool = False,
             checkpoint_every: float | None = 60.0) -> GridSummary:
    """Run every config that has no valid record yet in ``results_dir``; return what happened.

    Finished runs are skipped (same config hash, via :func:`find_record`); the rest are claimed, executed by
    ``executor`` and their records written atomically by this driver, which then releases the claim. Runs
    claimed by another live driver are left to it and counted. A failed run (divergence) is recorded and never
    retried automatically; a run that raises (user error, crash) writes no record and is reported through
    ``log`` and ``GridSummary.errors``. The grid log ``<results_dir>/grids/<name>.json`` is updated at the end.

    On ``KeyboardInterrupt`` the executor is closed, this driver's claims are released, the grid log keeps the
    time spent, ``summary.interrupted`` is set and the interrupt is re-raised with the summary as its first
    argument (the CLI exits 130). A ``kill -9`` leaves at most stale claims, which the next call takes over, and
    the temp file of a record being written, which the next call deletes.

    The configs are canonicalised first (:func:`nlbench.benchmark.harness.canonical_config`, on copies).
    ``force`` reruns runs that have a finished record too (replacing it; no checkpoint is read);
    ``compile_model`` compiles each run's model; ``checkpoint_every`` is the seconds between a run's end-of-epoch
    checkpoints under ``<results_dir>/checkpoints`` (``None``: none), as for ``nlbench run``.
    """
    import copy

    from nlbench.benchmark.harness import canonical_config

    claim_ttl = check_claim_ttl(claim_ttl)
    # the names and hashes the records will carry, whoever built the configs (a script's RunConfig lacks the
    # per-noise-family options a worker's canonicalisation adds, and its record would not match)
    configs = [canonical_config(copy.deepcopy(c)) for c in configs]
    results_dir = Path(results_dir)
    t0 = time.perf_counter()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    summary = GridSummary(name=name, total=len(configs))
    say = log or (lambda _msg: None)
    claims = Claims(results_dir, ttl=claim_ttl)
    bar = ProgressBar(False, 0, "")
    ckpt_dir = checkpoints_dir(results_dir)
    for folder in (runs_dir(results_dir), results_dir / GRIDS_DIR, ckpt_dir):  # what killed writers left behind
        for tmp in orphaned_temps(folder):
            with contextlib.suppress(OSError):
                tmp.unlink()
    try:
        todo: list[RunConfig] = []
        for cfg in configs:
            if not force and find_record(results_dir, cfg.run_name()) is not None:
                summary.skipped += 1
                remove_stale_claim(results_dir, cfg.run_name(), claim_ttl)
            elif not claims.acquire(cfg.run_name()):
                summary.left_to_other += 1
            elif not force and find_record(results_dir, cfg.run_name()) is not None:
                # another driver finished it between our check and our claim (it writes, then releases)
                claims.release(cfg.run_name())
                summary.skipped += 1
            else:
                todo.append(cfg)
        claims.start_heartbeat()
        bar = ProgressBar(progress, len(todo), f"grid {name}")
        expected = {cfg.run_name() for cfg in todo}
        payloads = [payload_for(c, data_root, device, checkpoint_dir=None if checkpoint_every is None else ckpt_dir,
                                checkpoint_every=60.0 if checkpoint_every is None else checkpoint_every,
                                resume=not force, compile_model=compile_model) for c in todo]
        for payload, result in executor.run(payloads):
            cfg = RunConfig.from_dict(payload["config"])
            run_name = cfg.run_name()
            bad_before = summary.failed + len(summary.errors)
            if isinstance(result, BaseException):
                msg = str(result).splitlines()[0] if str(result) else type(result).__name__
                if not isinstance(result, NLBenchError):
                    msg = f"{type(result).__name__}: {msg}"
                summary.errors.append((run_name, msg))
                say(f"error: {run_name}: {msg}")
            elif result.get("config_hash") != cfg.hash() or run_name not in expected:
                summary.errors.append((run_name, "executor returned a record of another config"))
                say(f"error: {run_name}: executor returned a record of another config")
            else:
                try:
                    write_record(results_dir, result)
                except NLBenchError as e:  # a record that breaks the schema is that run's error, not the grid's
                    summary.errors.append((run_name, str(e)))
                    say(f"error: {run_name}: {e}")
                    claims.release(run_name)
                    bar.advance(run_name, failed=True)
                    continue
                remove_checkpoint(checkpoint_path(ckpt_dir, run_name))
                if result["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed += 1
                    reason = (result.get("error") or {}).get("reason", "failed")
                    say(f"failed: {run_name}: {reason}")
            claims.release(run_name)
            bar.advance(run_name, failed=summary.failed + len(summary.errors) > bad_before)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise KeyboardInterrupt(summary) from None
    finally:
        bar.close()
        executor.close()
        claims.stop_heartbeat()
        claims.release_all()
        summary.wall_time_s = time.perf_counter() - t0
        summary.complete = not summary.interrupted and all(
            find_record(results_dir, c.run_name()) is not None for c in configs)
        with contextlib.suppress(NLBenchError, OSError):  # the log must never mask the grid's outcome
            _update_grid_log(results_dir, name, configs, summary, started,
                             datetime.now(UTC).isoformat(timespec="seconds"))
    return summary
