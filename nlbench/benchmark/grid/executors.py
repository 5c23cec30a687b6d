"""How a grid's runs execute.

``run_one(payload) -> record`` is a top-level, picklable function that never writes files; an executor (the
:class:`Executor` protocol) maps it over payloads and yields ``(payload, record or exception)`` as runs complete.
:class:`LocalExecutor` runs in-process or in a spawn process pool; ``nlbench.benchmark.ray_executor.RayExecutor``
implements the same protocol on Ray.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from nlbench.benchmark.config import RunConfig
from nlbench.errors import NLBenchError

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
    "checkpoint_dir": str | None, "checkpoint_every": float, "resume": bool, "compile_model": bool,
    "portable": bool}`` (the last four optional: 60 s, true, false, false). ``threads`` sets torch's intra-op
    threads for this process (workers sharing a machine); the run checkpoints into (and, with ``resume``, resumes
    from) ``checkpoint_dir``, which the driver cleans up; ``compile_model`` wraps the model in ``torch.compile``;
    ``portable`` switches portable numerics on (:mod:`nlbench.portable`) before torch computes anything here
    (workers also inherit ``NLBENCH_PORTABLE`` from the driver's environment; the run refuses to start if the
    pins cannot take effect in this process).
    The record has ``status`` ``"ok"`` or ``"failed"`` (divergence); a user error (unknown name, missing data) raises
    :class:`NLBenchError` carrying only the message, so it pickles across process and Ray boundaries.
    """
    from nlbench import portable

    if payload.get("portable"):
        portable.enable()
    import torch

    from nlbench.benchmark.harness import train

    if payload.get("threads"):
        torch.set_num_threads(int(payload["threads"]))
    try:
        portable.check()  # before the dataset is loaded: pins that cannot hold fail the run at once
        cfg = RunConfig.from_dict(payload["config"])
        dataset = _cached_dataset(cfg, payload.get("data_root"))
        return train(cfg, data_root=payload.get("data_root"), device=payload.get("device", "auto"),
                     results_dir=None, progress=False, dataset=dataset, checkpoint_dir=payload.get("checkpoint_dir"),
                     checkpoint_every=payload.get("checkpoint_every", 60.0), resume=payload.get("resume", True),
                     compile_model=bool(payload.get("compile_model", False)))
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
    with ``max(1, cpu_count // workers)`` torch threads so workers do not oversubscribe the cores. Workers
    inherit the driver's environment, portable numerics (``NLBENCH_PORTABLE``, ``--portable``) included, and
    each payload also says ``portable`` when the driver runs in that mode. ``task`` replaces :func:`run_one`
    (it must be picklable: a module-level function)."""

    def __init__(self, workers: int = 1, *, task: Callable[[dict], dict] | None = None):
        check_executor_options(workers)
        self.workers = workers
        self.task = run_one if task is None else task
        self._pool: ProcessPoolExecutor | None = None

    def run(self, payloads: list[dict]) -> Iterator[tuple[dict, dict | BaseException]]:
        from nlbench import portable

        if portable.requested():  # explicit, should a worker's environment be rebuilt
            payloads = [{**p, "portable": True} for p in payloads]
        if self.workers == 1:
            for p in payloads:
                try:
                    rec = self.task(p)
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
            futures[self._pool.submit(self.task, {**p, "threads": p.get("threads") or threads})] = p
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
