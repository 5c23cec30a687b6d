"""Grids of runs: expand a spec into configs, execute them resumably, claim each run so two drivers never
duplicate one, and write every record from the driver.

The pieces, each usable on its own:

* :class:`GridSpec` / :func:`expand` / :func:`load_grid`: methods x noises x seeds (plus extra rows) over one
  base protocol, in a deterministic order, with canonical names so a config hashes like the record it produces.
* :func:`run_one` and the :class:`Executor` protocol: how runs execute. ``run_one(payload) -> record`` is a
  top-level, picklable function that never writes files; an executor maps it over payloads and yields
  ``(payload, record or exception)`` as runs complete. :class:`LocalExecutor` runs in-process or in a spawn
  process pool; ``nlbench.benchmark.ray_executor.RayExecutor`` implements the same protocol on Ray.
* :func:`run_grid`: the driver. It skips runs whose valid record exists, claims the rest (claim files under
  ``<results_dir>/runs/.claims/``), writes each returned record atomically, releases the claim, and keeps a grid
  log with the measured wall time under ``<results_dir>/grids/<name>.json``.

Claims. A claim is ``<run_name>.claim`` holding pid, hostname, start time and a random token, written to a temp
file and hard-linked into place (atomic and exclusive like ``O_CREAT | O_EXCL``, on local file systems and NFS),
so it is never seen empty. ``nlbench run`` with a results folder takes the same claim. The driver holds claims
for every run it has queued and refreshes their mtime from a heartbeat thread, so the TTL measures time since
the holder was last seen alive, not the run's length. A claim is stale when its pid is dead on this host, its
heartbeat is older than the TTL (other hosts, or a reused pid), or it is empty or unreadable (a crash, a full
disk); a stale claim is taken over by renaming it away first, so of two drivers taking over the same claim only
one wins. Because a record is written before its claim is removed, a driver re-checks for the record after
claiming, and a run is never executed twice by drivers sharing a results folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from nlbench.benchmark.checkpoint import checkpoint_path, checkpoints_dir
from nlbench.benchmark.checkpoint import remove as remove_checkpoint
from nlbench.benchmark.config import METHOD_DEFAULTS, PRESETS, RunConfig
from nlbench.benchmark.progress import ProgressBar
from nlbench.benchmark.records import (
    TEMP_MARK,
    _host_tag,
    atomic_write_text,
    find_record,
    is_orphaned_temp,
    orphaned_temps,
    pid_alive,
    read_json_file,
    runs_dir,
    write_record,
)
from nlbench.errors import NLBenchError

GRIDS_FILE = "grids.toml"
GRIDS_DIR = "grids"
CLAIMS_DIR = ".claims"
#: default claim TTL (seconds since the holder's last heartbeat) after which another host may take a run over
DEFAULT_CLAIM_TTL = 3600.0
#: shortest claim TTL accepted: the heartbeat refreshes claims every ttl/4 seconds, at least every second
MIN_CLAIM_TTL = 10.0
#: largest claim file read (real ones are about 120 bytes)
MAX_CLAIM_BYTES = 4096
#: largest grid log read (a log lists one 12-digit hash per run)
MAX_GRID_LOG_BYTES = 16 * 2**20


def check_claim_ttl(ttl: float) -> float:
    """``ttl`` if it is a finite number of seconds >= :data:`MIN_CLAIM_TTL`, else one-line NLBenchError."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl < MIN_CLAIM_TTL:
        raise NLBenchError(f"--claim-ttl must be a finite number of seconds >= {MIN_CLAIM_TTL:g}, got {ttl!r}")
    return float(ttl)


#: most local worker processes (each a training run) one grid may start
MAX_WORKERS = 512
#: most CPUs / GPUs one run may reserve on a Ray cluster
MAX_CPUS_PER_RUN, MAX_GPUS_PER_RUN = 1024.0, 64.0


def _real(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_executor_options(workers: int = 1, cpus_per_run: float = 1.0, gpus_per_run: float = 0.0) -> None:
    """One-line NLBenchError unless ``--workers`` is an integer in [1, :data:`MAX_WORKERS`] and the per-run
    resources are finite, CPUs in (0, :data:`MAX_CPUS_PER_RUN`], GPUs in [0, :data:`MAX_GPUS_PER_RUN`]; checked
    for every executor before a grid starts, whichever executor uses them."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise NLBenchError(f"--workers must be at least 1, got {workers!r}")
    if workers > MAX_WORKERS:
        raise NLBenchError(f"--workers must be at most {MAX_WORKERS} (one training process each), got {workers}")
    if not _real(cpus_per_run) or not math.isfinite(cpus_per_run) or not 0 < cpus_per_run <= MAX_CPUS_PER_RUN:
        raise NLBenchError(f"--cpus-per-run must be positive and finite, at most {MAX_CPUS_PER_RUN:g}, "
                           f"got {cpus_per_run!r}")
    if not _real(gpus_per_run) or not math.isfinite(gpus_per_run) or not 0 <= gpus_per_run <= MAX_GPUS_PER_RUN:
        raise NLBenchError(f"--gpus-per-run must be non-negative and finite, at most {MAX_GPUS_PER_RUN:g}, "
                           f"got {gpus_per_run!r}")


# ----------------------------------------------------------------------------------------------- specs


@dataclass
class GridRow:
    """An extra block of a grid, e.g. ``erm`` on ``clean`` for the leaderboard's clean reference. ``overrides``
    are RunConfig fields that differ from the grid's base protocol (rarely needed)."""

    name: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSpec:
    """A named grid: ``methods x noises x seeds`` on one dataset and one base protocol, plus extra rows.

    ``methods`` may be ``("all",)``: every registered method at expansion time (plugins included). The
    protocol fields left ``None`` take :class:`RunConfig` defaults; ``overrides`` sets any other RunConfig
    field (``dataset_options``, ``schedule``, ``val_size``, ...) for every run of the grid.
    """

    name: str
    dataset: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int | None = None
    model: str | None = None
    meta_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: tuple[GridRow, ...] = ()
    #: methods left out of ``"all"`` in the main block (e.g. because an extra row runs them with options)
    exclude: tuple[str, ...] = ()
    #: per-method options of the protocol (a preset's ``method_defaults``), under each row's ``method_options``
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base(self) -> dict[str, Any]:
        """RunConfig keyword arguments shared by every run of the grid."""
        out = {"dataset": self.dataset, **self.overrides}
        for key in ("epochs", "model", "meta_size", "batch_size", "lr"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


_CONFIG_FIELDS = {f.name for f in fields(RunConfig)}
# per-run identity fields: a grid's base protocol may not set them
_PER_RUN = {"method", "noise", "seed"}


def _check_overrides(where: str, overrides: dict[str, Any]) -> None:
    bad = sorted(set(overrides) - (_CONFIG_FIELDS - _PER_RUN))
    if bad:
        raise NLBenchError(f"{where}: unknown or per-run config keys {bad}; "
                           f"valid: {', '.join(sorted(_CONFIG_FIELDS - _PER_RUN))}")


def canonical_methods(methods: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Canonical method names, ``"all"`` expanded to every registered method but those in ``exclude``,
    duplicates (``fbr`` and ``surrogate``) dropped, first occurrence kept."""
    from nlbench.methods import get_method, list_methods

    left_out = {get_method(name).name for name in exclude}
    out: list[str] = []
    for name in methods:
        for canon in ([m for m in list_methods() if m not in left_out] if name == "all" else [get_method(name).name]):
            if canon not in out:
                out.append(canon)
    return out


def _configs(base: dict[str, Any], methods, noises, seeds,
             method_defaults: dict[str, dict[str, Any]]) -> Iterator[RunConfig]:
    from nlbench.benchmark.config import preset_method_options
    from nlbench.benchmark.harness import canonical_config

    # Seed-major order: an interrupted grid leaves complete seeds behind, so a leaderboard built from a
    # partial grid already compares every method on the same seeds.
    for seed in seeds:
        for noise in noises:
            for method in methods:
                options = {**preset_method_options(method_defaults, method), **base.get("method_options", {})}
                yield canonical_config(RunConfig(**{**base, "method": method, "noise": noise, "seed": int(seed),
                                                    "method_options": options}))


def expand(spec: GridSpec) -> list[RunConfig]:
    """The grid's configs in a deterministic order: the main block seed-major (seed, then noise, then method
    in the order given), then each extra row in the same way. Names are canonical (aliases resolved, noise
    specs normalised, every name checked, so typos fail before anything runs); a config that appears twice
    (e.g. ``erm`` on ``clean`` in both the main block and an extra row) is kept once, at its first place."""
    _check_overrides(f"grid {spec.name!r}", spec.overrides)
    if not spec.seeds:
        raise NLBenchError(f"grid {spec.name!r} has no seeds")
    blocks = [(spec.base(), canonical_methods(spec.methods, spec.exclude), spec.noises, spec.seeds)]
    for row in spec.extra:
        _check_overrides(f"grid {spec.name!r} row {row.name!r}", row.overrides)
        blocks.append(({**spec.base(), **row.overrides}, canonical_methods(row.methods), row.noises, row.seeds))
    out: list[RunConfig] = []
    seen: set[str] = set()
    for base, methods, noises, seeds in blocks:
        for cfg in _configs(base, methods, noises, seeds, spec.method_defaults):
            if cfg.hash() not in seen:
                seen.add(cfg.hash())
                out.append(cfg)
    return out


def _tuple(value: Any, key: str, where: str, kind: type) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise NLBenchError(f"{where}: {key} must be a list of {kind.__name__}, got {value!r}")
    return tuple(value)


def parse_grid(name: str, table: dict[str, Any]) -> GridSpec:
    """A :class:`GridSpec` from one TOML table (see ``nlbench/grids.toml`` for the format)."""
    where = f"grid {name!r}"
    table = dict(table)
    try:
        dataset = table.pop("dataset")
        methods = _tuple(table.pop("methods"), "methods", where, str)
        noises = _tuple(table.pop("noises"), "noises", where, str)
        seeds = _tuple(table.pop("seeds"), "seeds", where, int)
    except KeyError as e:
        raise NLBenchError(f"{where} lacks the key {e.args[0]!r}") from None
    extra = []
    for i, row in enumerate(table.pop("extra", [])):
        rw = f"{where} extra row {i}"
        row = dict(row)
        try:
            extra.append(GridRow(name=str(row.pop("name", f"row{i}")),
                                 methods=_tuple(row.pop("methods"), "methods", rw, str),
                                 noises=_tuple(row.pop("noises"), "noises", rw, str),
                                 seeds=_tuple(row.pop("seeds", list(seeds)), "seeds", rw, int), overrides=row))
        except KeyError as e:
            raise NLBenchError(f"{rw} lacks the key {e.args[0]!r}") from None
    protocol = {k: table.pop(k) for k in ("epochs", "model", "meta_size", "batch_size", "lr") if k in table}
    exclude = _tuple(table.pop("exclude", []), "exclude", where, str)
    table.pop("description", None)
    preset = table.pop("preset", None)
    method_defaults = table.pop(METHOD_DEFAULTS, {})
    if not isinstance(method_defaults, dict) or not all(isinstance(v, dict) for v in method_defaults.values()):
        raise NLBenchError(f"{where}: {METHOD_DEFAULTS} must map method names to option tables")
    if preset is not None:  # a named protocol: its values under the grid's own keys
        values = dict(PRESETS.get(str(preset)))
        method_defaults = {**values.pop(METHOD_DEFAULTS, {}), **method_defaults}
        if values.pop("dataset", dataset) != dataset:
            raise NLBenchError(f"{where}: preset {preset!r} is for another dataset")
        for key in ("epochs", "model", "meta_size", "batch_size", "lr"):
            if key in values:
                protocol.setdefault(key, values.pop(key))
        table = {**values, **table}
    return GridSpec(name=name, dataset=dataset, methods=methods, noises=noises, seeds=seeds, overrides=table,
                    extra=tuple(extra), exclude=exclude, method_defaults=method_defaults, **protocol)


def named_grids(path: str | os.PathLike | None = None) -> dict[str, GridSpec]:
    """Every grid defined in ``path`` (default: the ``grids.toml`` shipped with nlbench), by name."""
    try:
        text = Path(path).read_text() if path is not None else \
            resources.files("nlbench").joinpath(GRIDS_FILE).read_text()
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise NLBenchError(f"cannot read grid file {path or GRIDS_FILE}: {e}") from None
    return {name: parse_grid(name, table) for name, table in data.items()}


def load_grid(name: str, path: str | os.PathLike | None = None) -> GridSpec:
    """The named grid; unknown names raise with the valid list."""
    grids = named_grids(path)
    if name not in grids:
        raise NLBenchError(f"unknown grid {name!r}; valid: {', '.join(sorted(grids))}")
    return grids[name]


# ------------------------------------------------------------------------------------------- executors

# One dataset kept per process: a grid's runs share it, and loading Fashion-MNIST or CIFAR per run costs
# seconds. Keyed by everything load_dataset sees; one entry bounds the memory.
_DATASET_CACHE: dict[tuple, Any] = {}


def _cached_dataset(cfg: RunConfig, data_root: str | None):
    from nlbench.datasets import load_dataset

    key = (cfg.dataset, data_root, json.dumps(cfg.dataset_options, sort_keys=True, default=str))
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()
        _DATASET_CACHE[key] = load_dataset(cfg.dataset, data_root, **cfg.dataset_options)
    return _DATASET_CACHE[key]


def run_one(payload: dict) -> dict:
    """Execute one run described by ``payload`` and return its record; never writes a file.

    ``payload = {"config": RunConfig.to_dict(), "data_root": str | None, "device": str, "threads": int | None,
    "checkpoint_dir": str | None}``. ``threads`` sets torch's intra-op threads for this process (workers sharing
    a machine); the run checkpoints into (and resumes from) ``checkpoint_dir``, which the driver cleans up.
    The record has ``status`` ``"ok"`` or ``"failed"`` (divergence); a user error (unknown name, missing data) raises
    :class:`NLBenchError` carrying only the message, so it pickles across process and Ray boundaries.
    """
    import torch

    from nlbench.benchmark.harness import train

    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    try:
        cfg = RunConfig.from_dict(payload["config"])
        dataset = _cached_dataset(cfg, payload.get("data_root"))
        return train(cfg, data_root=payload.get("data_root"), device=payload.get("device", "auto"),
                     results_dir=None, progress=False, dataset=dataset, checkpoint_dir=payload.get("checkpoint_dir"))
    except NLBenchError as e:
        # subclasses may take extra constructor arguments that pickling cannot restore
        raise NLBenchError(str(e)) from None


class Executor(Protocol):
    """Runs payloads (see :func:`run_one`) and yields ``(payload, record or exception)`` as each completes,
    in completion order. ``close`` stops everything still running (Ctrl-C) and frees the workers."""

    def run(self, payloads: list[dict]) -> Iterator[tuple[dict, dict | BaseException]]: ...

    def close(self) -> None: ...


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the driver handles it and terminates the workers, so workers
    # ignore it instead of each printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(driver_pid: int, poll_s: float = 1.0) -> None:
    """Make this process die when ``driver_pid``, its parent, does (a ``kill -9`` of the driver must not leave
    workers training for nobody). On Linux the kernel sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); everywhere,
    a daemon thread polls the parent pid as a fallback."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != driver_pid:  # the driver died before the death signal was armed
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="nlbench-watch-driver", daemon=True).start()


def _worker_init(driver_pid: int) -> None:
    """Initializer of the local executor's workers: ignore Ctrl-C, die with the driver."""
    _ignore_sigint()
    _die_with(driver_pid)


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class LocalExecutor:
    """``workers == 1``: runs in this process, one after another. ``workers > 1``: a spawn-context process pool
    (spawn, because forking a process that has initialised torch threads or CUDA is unsafe), each worker
    with ``max(1, cpu_count // workers)`` torch threads so workers do not oversubscribe the cores."""

    def __init__(self, workers: int = 1):
        check_executor_options(workers)
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def run(self, payloads: list[dict]) -> Iterator[tuple[dict, dict | BaseException]]:
        if self.workers == 1:
            for p in payloads:
                try:
                    rec = run_one(p)
                except Exception as e:  # reported by the driver; the grid goes on
                    yield p, e
                else:
                    yield p, rec
            return
        if not payloads:
            return
        threads = max(1, cpu_count() // self.workers)
        self._pool = ProcessPoolExecutor(max_workers=min(self.workers, len(payloads)),
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init, initargs=(os.getpid(),))
        futures: dict[Future, dict] = {}
        for p in payloads:
            futures[self._pool.submit(run_one, {**p, "threads": p.get("threads") or threads})] = p
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    rec = fut.result()
                except Exception as e:
                    yield futures[fut], e
                else:
                    yield futures[fut], rec
        self.close()

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # No public API before Python 3.14 (terminate_workers) stops a running task: terminate the processes.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------- claims


def claims_dir(results_dir: str | os.PathLike) -> Path:
    return runs_dir(results_dir) / CLAIMS_DIR


def claim_path(results_dir: str | os.PathLike, run_name: str) -> Path:
    return claims_dir(results_dir) / f"{run_name}.claim"


def read_claim(path: str | os.PathLike) -> dict | None:
    """The claim's content, ``{}`` if it is unreadable (empty, garbage, a FIFO: never blocks, reads at most
    :data:`MAX_CLAIM_BYTES`), ``None`` if it is gone."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        data = read_json_file(path, max_bytes=MAX_CLAIM_BYTES)
    except ValueError:
        return {} if os.path.lexists(path) else None
    return data if isinstance(data, dict) else {}


def claim_is_stale(info: dict, mtime: float, *, now: float, ttl: float, host: str | None = None,
                   alive: Callable[[int], bool] = pid_alive) -> bool:
    """Whether a claim (content ``info``, last heartbeat ``mtime``) may be taken over.

    Stale if its heartbeat is older than ``ttl`` seconds (a holder on another host, a hung holder, or a reused
    pid), if it was made on this host by a process that no longer runs, or at once if it has no readable pid and
    host (empty or garbage: a crash or a full disk; :class:`Claims` creates a claim complete, by linking a
    filled temp file into place, so a live holder's claim is never empty).
    """
    pid, claim_host = info.get("pid"), info.get("host")
    if isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(claim_host, str):
        return True
    if now - mtime > ttl:
        return True
    host = socket.gethostname() if host is None else host
    return claim_host == host and not alive(pid)


def stale_claims(results_dir: str | os.PathLike, ttl: float = DEFAULT_CLAIM_TTL) -> list[Path]:
    """Claim files under ``results_dir`` that are stale (and leftovers of interrupted take-overs)."""
    ttl = check_claim_ttl(ttl)
    folder = claims_dir(results_dir)
    if not folder.is_dir():
        return []
    out = []
    now = time.time()
    for path in sorted(folder.iterdir()):
        if ".claim.taken-" in path.name or (TEMP_MARK in path.name and is_orphaned_temp(path, ttl=ttl)):
            out.append(path)
            continue
        if path.suffix != ".claim":
            continue
        info = read_claim(path)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if info is not None and claim_is_stale(info, mtime, now=now, ttl=ttl):
            out.append(path)
    return out


class Claims:
    """The claims this driver holds: acquire, heartbeat, release (only if still ours)."""

    def __init__(self, results_dir: str | os.PathLike, ttl: float = DEFAULT_CLAIM_TTL):
        self.results_dir = Path(results_dir)
        self.ttl = check_claim_ttl(ttl)
        self.host = socket.gethostname()
        self.held: dict[str, tuple[Path, str]] = {}  # run name -> (path, token)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _content(self, token: str) -> str:
        return json.dumps({"pid": os.getpid(), "host": self.host, "token": token,
                           "started": datetime.now(UTC).isoformat(timespec="seconds")})

    def _create(self, path: Path) -> str | None:
        """Create the claim complete: fill a temp file, then link() it into place (atomic, fails if the claim
        exists, like O_EXCL), so no reader ever sees an empty claim of a live holder."""
        token = secrets.token_hex(8)
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}@{_host_tag()}-{token}")
        try:
            with open(tmp, "x") as f:
                f.write(self._content(token))
            os.link(tmp, path)
        except FileExistsError:
            return None
        except FileNotFoundError:
            raise  # the folder went away: acquire() makes it again
        except OSError as e:
            raise NLBenchError(f"cannot write claim {path}: {e.strerror or e}") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        return token

    def acquire(self, run_name: str) -> bool:
        """Claim ``run_name``; takes over a stale claim. False if another live driver holds it."""
        path = claim_path(self.results_dir, run_name)
        for _ in range(3):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NLBenchError(f"cannot write to {path.parent}: {e.strerror or e}") from None
            try:
                token = self._create(path)
            except FileNotFoundError:
                continue  # the emptied claims folder was removed meanwhile (remove_claims_dir): make it again
            if token is not None:
                with self._lock:
                    self.held[run_name] = (path, token)
                return True
            info = read_claim(path)
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue  # released meanwhile: try to create it again
            if info is None:
                continue
            if not claim_is_stale(info, mtime, now=time.time(), ttl=self.ttl, host=self.host):
                return False
            if not self._take_over(path, info):
                return False
        return False

    def _take_over(self, path: Path, seen: dict) -> bool:
        """Remove the stale claim ``seen`` from ``path`` so it can be created anew. The rename is atomic, so of
        two drivers taking over, one gets FileNotFoundError; if the renamed file is not the stale claim we
        judged (someone re-claimed in between), it is put back with link(), which never overwrites."""
        aside = path.with_name(f"{path.name}.taken-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return True  # someone removed it: creating it again decides
        if read_claim(aside) != seen:
            with contextlib.suppress(OSError):
                os.link(aside, path)
            with contextlib.suppress(OSError):
                aside.unlink(missing_ok=True)
            return False
        with contextlib.suppress(OSError):  # a directory in the way: renamed aside, out of the way
            aside.unlink(missing_ok=True)
        return True

    def release(self, run_name: str) -> None:
        """Remove our claim on ``run_name``, unless it was taken over (then it is no longer ours)."""
        with self._lock:
            entry = self.held.pop(run_name, None)
        if entry is None:
            return
        path, token = entry
        if (read_claim(path) or {}).get("token") == token:
            path.unlink(missing_ok=True)

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)

    def heartbeat(self) -> None:
        """Refresh the mtime of every held claim (the TTL counts from the last heartbeat)."""
        with self._lock:
            paths = [p for p, _ in self.held.values()]
        for p in paths:
            with contextlib.suppress(OSError):
                os.utime(p)

    def start_heartbeat(self, interval: float | None = None) -> None:
        interval = interval if interval is not None else max(1.0, min(60.0, self.ttl / 4))

        def beat():
            while not self._stop.wait(interval):
                self.heartbeat()

        self._beat = threading.Thread(target=beat, name="nlbench-claims-heartbeat", daemon=True)
        self._beat.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()


def remove_claims_dir(results_dir: str | os.PathLike) -> None:
    """Remove the claims folder if it is empty (``nlbench run`` leaves none behind); never raises."""
    with contextlib.suppress(OSError):
        claims_dir(results_dir).rmdir()


def remove_stale_claim(results_dir: str | os.PathLike, run_name: str, ttl: float = DEFAULT_CLAIM_TTL) -> bool:
    """Remove ``run_name``'s claim if it is stale (a driver killed after writing the record and before
    releasing its claim leaves one behind)."""
    path = claim_path(results_dir, run_name)
    info = read_claim(path)
    if info is None:
        return False
    try:
        stale = claim_is_stale(info, path.stat().st_mtime, now=time.time(), ttl=ttl)
    except FileNotFoundError:
        return False
    if stale:
        path.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------------- driver


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
                threads: int | None = None, checkpoint_dir: str | os.PathLike | None = None) -> dict:
    """The :func:`run_one` payload of ``cfg``."""
    return {"config": cfg.to_dict(), "data_root": None if data_root is None else str(data_root),
            "device": device, "threads": threads,
            "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir)}


def run_grid(configs: list[RunConfig], results_dir: str | os.PathLike, executor: Executor, *,
             progress: bool = True, name: str = "grid", data_root: str | os.PathLike | None = None,
             device: str = "auto", claim_ttl: float = DEFAULT_CLAIM_TTL,
             log: Callable[[str], None] | None = None) -> GridSummary:
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
    """
    claim_ttl = check_claim_ttl(claim_ttl)
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
            if find_record(results_dir, cfg.run_name()) is not None:
                summary.skipped += 1
                remove_stale_claim(results_dir, cfg.run_name(), claim_ttl)
            elif not claims.acquire(cfg.run_name()):
                summary.left_to_other += 1
            elif find_record(results_dir, cfg.run_name()) is not None:
                # another driver finished it between our check and our claim (it writes, then releases)
                claims.release(cfg.run_name())
                summary.skipped += 1
            else:
                todo.append(cfg)
        claims.start_heartbeat()
        bar = ProgressBar(progress, len(todo), f"grid {name}")
        expected = {cfg.run_name() for cfg in todo}
        for payload, result in executor.run([payload_for(c, data_root, device, checkpoint_dir=ckpt_dir)
                                             for c in todo]):
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
                write_record(results_dir, result)
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
