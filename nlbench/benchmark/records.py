"""Run records: one JSON file per run, written atomically, named by what the run was and its config hash.

Records are the truth: tables, plots and the leaderboard are regenerated from them. A record lives at
``<results_dir>/runs/<dataset>__<method>__<noise>__s<seed>__<hash>.json``. It is written to a temp file in the
same folder (``.<name>.tmp-<pid>@<host>-<random>``), flushed, fsynced and renamed, so a reader never sees half a
record. A killed writer leaves only that dot-file temp: readers ignore it, ``nlbench results check`` reports it
once its writer is gone, and the next ``nlbench grid`` on the folder deletes it.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlbench.errors import NLBenchError

SCHEMA_VERSION = 1
RUNS_DIR = "runs"
TEMP_MARK = ".tmp-"
#: seconds after which any temp file counts as orphaned, whoever wrote it (a writer on another host, a reused pid)
ORPHAN_TTL = 3600.0

#: key -> type(s) every record must have (the schema that readers rely on)
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int, "method": str, "noise": str, "dataset": str, "model": str, "seed": int, "status": str,
    "config": dict, "config_hash": str, "env": dict, "noise_report": dict, "history": list, "final": dict,
    "wall_time_s": (int, float),
}
STATUSES = ("ok", "failed")


def runs_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / RUNS_DIR


def record_path(results_dir: str | os.PathLike, run_name: str) -> Path:
    return runs_dir(results_dir) / f"{run_name}.json"


def _clean_floats(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader (pandas, jq, browsers) can parse the record."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_floats(v) for v in obj]
    return obj


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that the file is either absent/old or complete: temp file, fsync, rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}@{_host_tag()}-", dir=path.parent)
    except OSError as e:
        raise NLBenchError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make records in a shared results folder unreadable to others
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: the user's to fix, so one line rather than a traceback
        Path(tmp).unlink(missing_ok=True)
        raise NLBenchError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (a killed, unreaped process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    except (OSError, ValueError, IndexError):
        return True


def is_orphaned_temp(path: str | os.PathLike, *, ttl: float = ORPHAN_TTL, now: float | None = None) -> bool:
    """Whether a temp file of :func:`atomic_write_text` has no writer any more: its writer process on this host
    is gone, it is older than ``ttl`` seconds, or its name carries no writer (an older nlbench's). A temp
    being written right now is not orphaned, so checking a folder while a grid runs reports nothing."""
    path = Path(path)
    m = re.search(re.escape(TEMP_MARK) + r"(\d+)@(.+)-[^-]*$", path.name)
    if m is None:
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place meanwhile
    return age > ttl or (m.group(2) == _host_tag() and not pid_alive(int(m.group(1))))


def orphaned_temps(folder: str | os.PathLike, ttl: float = ORPHAN_TTL) -> list[Path]:
    """The orphaned temp files (see :func:`is_orphaned_temp`) directly in ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir())
            if p.name.startswith(".") and TEMP_MARK in p.name and is_orphaned_temp(p, ttl=ttl)]


def ensure_runs_dir(results_dir: str | os.PathLike) -> Path:
    """Create ``<results_dir>/runs`` or raise :class:`NLBenchError`: called before training, so an unwritable
    results dir costs nothing rather than a whole run."""
    folder = runs_dir(results_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NLBenchError(f"cannot write to {folder}: {e.strerror or e}") from None
    return folder


def write_record(results_dir: str | os.PathLike, record: dict) -> Path:
    """Atomically write ``record`` and return its path."""
    path = record_path(results_dir, record["run_name"])
    atomic_write_text(path, json.dumps(_clean_floats(record), indent=1, sort_keys=True) + "\n")
    return path


def validate_record(rec: Any) -> list[str]:
    """Schema problems of a parsed record (empty if valid)."""
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    problems = [f"missing key {k!r}" for k in REQUIRED if k not in rec]
    problems += [f"key {k!r} has type {type(rec[k]).__name__}" for k, t in REQUIRED.items()
                 if k in rec and not isinstance(rec[k], t)]
    if problems:
        return problems
    if rec["status"] not in STATUSES:
        problems.append(f"status {rec['status']!r} is not one of {STATUSES}")
    for i, h in enumerate(rec["history"]):
        if not isinstance(h, dict) or not {"epoch", "test_acc", "epoch_time_s"} <= set(h):
            problems.append(f"history[{i}] lacks epoch/test_acc/epoch_time_s")
            break
    if rec["status"] == "ok" and not {"last_acc", "best_acc", "last5_acc"} <= set(rec["final"]):
        problems.append("final lacks last_acc/best_acc/last5_acc")
    return problems


@dataclass
class RecordProblem:
    path: Path
    problem: str


def load_record(path: str | os.PathLike) -> dict:
    """Read and validate one record; raises ``ValueError`` naming the problem."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable: {e}") from None
    problems = validate_record(rec)
    if problems:
        raise ValueError("schema: " + "; ".join(problems))
    return rec


def scan_records(results_dir: str | os.PathLike) -> tuple[list[dict], list[RecordProblem]]:
    """All valid records under ``results_dir`` (sorted by file name) and the problems found: unreadable or
    schema-invalid files, orphaned temp files and duplicate config hashes."""
    folder = runs_dir(results_dir)
    records: list[dict] = []
    problems: list[RecordProblem] = []
    if not folder.is_dir():
        return records, problems
    problems += [RecordProblem(path, "orphaned temp file") for path in orphaned_temps(folder)]
    seen: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):  # temps (reported above when orphaned), claims, editor files
            continue
        if path.suffix != ".json":
            continue
        try:
            rec = load_record(path)
        except ValueError as e:
            problems.append(RecordProblem(path, str(e)))
            continue
        h = rec["config_hash"]
        if h in seen:
            problems.append(RecordProblem(path, f"duplicate config hash {h} (also {seen[h].name})"))
            continue
        seen[h] = path
        rec["_path"] = str(path)
        records.append(rec)
    return records, problems


def find_record(results_dir: str | os.PathLike, run_name: str) -> dict | None:
    """The finished record of ``run_name`` if a valid one exists (resume: skip runs already done)."""
    path = record_path(results_dir, run_name)
    if not path.exists():
        return None
    try:
        return load_record(path)
    except ValueError:
        return None
