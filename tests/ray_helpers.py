"""Task functions for tests/test_ray.py, kept out of the test module so Ray workers can unpickle them.

The tests ship this module to the workers by value (``cloudpickle.register_pickle_by_value``), so workers need
neither ``tests/`` on their path nor pytest.
"""

from __future__ import annotations

import os
import signal


def die_once_then_run(marker: str, payload: dict) -> dict:
    """:func:`nlbench.benchmark.grid.run_one`, except that the first task to create ``marker`` SIGKILLs its own
    worker process after its first training epoch (inside the run, as a crash or the OOM killer would).

    ``O_CREAT | O_EXCL`` makes exactly one task, of several running at once, the one that dies; Ray then
    resubmits it, and the resubmission finds the marker and runs normally.
    """
    from nlbench.benchmark import harness
    from nlbench.benchmark.grid import run_one

    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return run_one(payload)

    def evaluate(*args, **kwargs):  # first called at the end of epoch 1
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)

    harness.evaluate = evaluate  # the process dies with this patch: no later task sees it
    return run_one(payload)


def record_pid_then_hang(pidfile: str, payload: dict) -> dict:
    """Write this worker's pid to ``pidfile`` (atomically), then sleep far longer than any test: a run that
    only its driver's death can end."""
    import time

    tmp = f"{pidfile}.tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, pidfile)
    time.sleep(3600)
    return {}
