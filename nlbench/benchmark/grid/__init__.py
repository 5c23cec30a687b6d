"""Grids of runs: expand a spec into configs, execute them resumably, claim each run so two drivers never
duplicate one, and write every record from the driver.

The pieces, each usable on its own (and re-exported here, so ``from nlbench.benchmark.grid import run_grid``
works):

* :mod:`~nlbench.benchmark.grid.specs`: :class:`GridSpec` / :func:`expand` / :func:`load_grid`: methods x noises
  x seeds (x swept values, plus extra rows) over one base protocol, in a deterministic order, with canonical
  names so a config hashes like the record it produces; grids come from ``nlbench/grids.toml`` or a grid file
  of the user's own (:func:`named_grids`), and :func:`override` puts command-line values on top.
* :mod:`~nlbench.benchmark.grid.executors`: :func:`run_one` and the :class:`Executor` protocol: how runs execute.
  ``run_one(payload) -> record`` is a top-level, picklable function that never writes files; an executor maps it
  over payloads and yields ``(payload, record or exception)`` as runs complete. :class:`LocalExecutor` runs
  in-process or in a spawn process pool; ``nlbench.benchmark.ray_executor.RayExecutor`` implements the same
  protocol on Ray.
* :mod:`~nlbench.benchmark.grid.claims`: :class:`Claims`, one claim file per run under
  ``<results_dir>/runs/.claims/`` so a run is never executed twice by drivers sharing a results folder (the
  protocol is described in that module).
* :mod:`~nlbench.benchmark.grid.driver`: :func:`run_grid`. It skips runs whose valid record exists, claims the
  rest, writes each returned record atomically, releases the claim, and keeps a grid log with the measured wall
  time under ``<results_dir>/grids/<name>.json``.
"""

from nlbench.benchmark.grid.claims import (
    CLAIMS_DIR,
    DEFAULT_CLAIM_TTL,
    MAX_CLAIM_BYTES,
    MIN_CLAIM_TTL,
    Claims,
    check_claim_ttl,
    claim_is_stale,
    claim_path,
    claims_dir,
    read_claim,
    remove_claims_dir,
    remove_stale_claim,
    stale_claims,
)
from nlbench.benchmark.grid.driver import (
    GRIDS_DIR,
    MAX_GRID_LOG_BYTES,
    GridSummary,
    grid_log_path,
    payload_for,
    read_grid_logs,
    run_grid,
)
from nlbench.benchmark.grid.executors import (
    MAX_CPUS_PER_RUN,
    MAX_GPUS_PER_RUN,
    MAX_WORKERS,
    Executor,
    LocalExecutor,
    check_executor_options,
    cpu_count,
    run_one,
)
from nlbench.benchmark.grid.specs import (
    GRID_KEYS,
    GRIDS_FILE,
    PROTOCOL_KEYS,
    GridRow,
    GridSpec,
    canonical_methods,
    check_sweep,
    expand,
    grids_in,
    load_grid,
    method_option_names,
    named_grids,
    override,
    parse_grid,
    read_toml,
)

__all__ = [
    "CLAIMS_DIR", "DEFAULT_CLAIM_TTL", "GRIDS_DIR", "GRIDS_FILE", "GRID_KEYS", "MAX_CLAIM_BYTES", "MAX_CPUS_PER_RUN",
    "MAX_GPUS_PER_RUN", "MAX_GRID_LOG_BYTES", "MAX_WORKERS", "MIN_CLAIM_TTL", "PROTOCOL_KEYS", "Claims", "Executor",
    "GridRow", "GridSpec", "GridSummary", "LocalExecutor", "canonical_methods", "check_claim_ttl",
    "check_executor_options", "check_sweep", "claim_is_stale", "claim_path", "claims_dir", "cpu_count", "expand",
    "grid_log_path", "grids_in", "load_grid", "method_option_names", "named_grids", "override", "parse_grid",
    "payload_for", "read_claim", "read_grid_logs", "read_toml", "remove_claims_dir", "remove_stale_claim", "run_grid",
    "run_one", "stale_claims",
]
