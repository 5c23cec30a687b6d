"""Run records: one JSON file per run, written atomically, named by what the run was and its config hash.

Records are the truth: tables, plots and the leaderboard are regenerated from them. A record lives at
``<results_dir>/runs/<dataset>__<method>__<noise>__s<seed>__<hash>.json``. It is written to a temp file in the
same folder (``.<name>.tmp-<pid>@<host>-<random>``), flushed, fsynced and renamed, so a reader never sees half a
record. A killed writer leaves only that dot-file temp: readers ignore it, ``nlbench results check`` reports it
once its writer is gone, and the next ``nlbench grid`` on the folder deletes it.

A results folder is untrusted input (records are shared and downloaded): :func:`load_record`, and through it
:func:`scan_records` and :func:`find_record`, reads any file without blocking or reading without bound
(:func:`read_json_file`) and hands on only records that pass the schema (:mod:`nlbench.benchmark.schema`);
everything else is reported.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from nlbench.benchmark.schema import SCHEMA_VERSION, STATUSES, record_problems  # noqa: F401 (re-exported)
from nlbench.errors import NLBenchError
from nlbench.safe_io import special_kind

RUNS_DIR = "runs"
TEMP_MARK = ".tmp-"
#: seconds after which any temp file counts as orphaned, whoever wrote it (a writer on another host, a reused pid)
ORPHAN_TTL = 3600.0

#: Largest pid a temp or claim name may carry (Linux's pid_max limit is 2^22; every OS's pid_t holds it).
MAX_PID = 2**22

#: Largest record file read (real ones are under 1 MB; a feature view of 2000 samples adds about 0.3 MB).
MAX_RECORD_BYTES = 32 * 2**20


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
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` on a binary temp file beside ``path``, fsync it and rename it onto ``path``, so the file
    is either absent/old or complete."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}@{_host_tag()}-", dir=path.parent)
    except OSError as e:
        raise NLBenchError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would make records in a shared results folder unreadable to others
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= MAX_PID:
        return False  # a pid that does not fit the OS's pid type names no process (os.kill would overflow)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
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
    m = re.search(re.escape(TEMP_MARK) + r"(\d{1,10})@(.+)-[^-]*$", path.name)  # a longer pid is garbage
    if m is None:
        return True
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place meanwhile
    return abs(age) > ttl or (m.group(2) == _host_tag() and not pid_alive(int(m.group(1))))


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
    """Atomically write ``record`` and return its path.

    The record is checked first, as every reader will check it (:func:`validate_record`, on the record as it
    will be stored: NaN as null), and it must carry a ``run_name`` (its file name): a record that breaks the
    schema is refused with :class:`NLBenchError` (one line) and nothing is written, so no writer can leave a
    record that ``results check`` would then report and every reader skip."""
    stored = _clean_floats(record)
    problems = validate_record(stored)
    if isinstance(stored, dict) and "run_name" not in stored:
        problems = [*problems, "missing key 'run_name'"]
    if problems:
        name = stored.get("run_name") if isinstance(stored, dict) else None
        shown = name if isinstance(name, str) and len(name) <= 300 and name.isprintable() else "a record"
        raise NLBenchError(f"refusing to write {shown}: it breaks the record schema: "
                           + " / ".join(" ".join(p.split()) for p in problems))
    path = record_path(results_dir, stored["run_name"])
    atomic_write_text(path, json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return path


def validate_record(rec: Any) -> list[str]:
    """Schema problems of a parsed record (empty if valid): :func:`nlbench.benchmark.schema.record_problems`."""
    return record_problems(rec)


class _Refused(ValueError):
    """A JSON value the reader refuses (NaN, infinities, overflowing numbers)."""


def _refuse_constant(token: str) -> float:
    raise _Refused(f"{token} is not JSON (a missing number is written as null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} overflows a float")
    return value


def read_json_file(path: str | os.PathLike, max_bytes: int = MAX_RECORD_BYTES) -> Any:
    """Parse a JSON file that may be hostile; raises ``ValueError("unreadable: <why>")``.

    Never blocks and never reads without bound: only a regular file is opened (checked before opening, and
    again on the open descriptor, which is opened non-blocking so a FIFO swapped in between cannot hang the
    reader), at most ``max_bytes`` are read, symlink loops and unreadable files are reported, nesting beyond the
    parser's recursion limit is reported, and the non-JSON tokens ``NaN``/``Infinity`` and numbers that
    overflow a float (``1e999``) are refused.
    """
    try:
        kind = special_kind(os.stat(path).st_mode)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                kind = special_kind(st.st_mode)
                data = b"" if kind or st.st_size > max_bytes else f.read(max_bytes + 1)
                size = max(st.st_size, len(data))
    except OSError as e:
        raise ValueError(f"unreadable: {e.strerror or e}") from None
    if kind is not None:
        raise ValueError(f"unreadable: {kind}, not a regular file")
    if size > max_bytes:
        raise ValueError(f"unreadable: {size} bytes, over the limit of {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"unreadable: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("unreadable: JSON nested too deeply") from None
    except (json.JSONDecodeError, _Refused) as e:
        raise ValueError(f"unreadable: {e}") from None
    except ValueError:  # Python refuses to convert integers of over 4300 digits
        raise ValueError("unreadable: a number too long to convert") from None


@dataclass
class RecordProblem:
    path: Path
    problem: str


def load_record(path: str | os.PathLike) -> dict:
    """Read (:func:`read_json_file`) and validate (:func:`validate_record`) one record; raises ``ValueError``
    naming the problem: ``unreadable: ...`` or ``schema: ...``."""
    rec = read_json_file(path)
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
        if os.path.lexists(folder):
            problems.append(RecordProblem(folder, "not a folder of records"))
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
    """The finished record of ``run_name`` if a valid one exists (resume: skip runs already done). It counts
    only if its ``config_hash`` is the hash in the file name and its ``config`` re-hashes to it: a record of
    another config copied or renamed onto the name does not mark the run done."""
    from nlbench.benchmark.config import config_hash

    path = record_path(results_dir, run_name)
    if not path.exists():
        return None
    try:
        rec = load_record(path)
    except ValueError:
        return None
    name_hash = run_name.rsplit("__", 1)[-1]
    if rec.get("config_hash") != name_hash or config_hash(rec.get("config")) != name_hash:
        return None
    if is_stale(rec):
        return None
    return rec


def current_method_version(method: str) -> int | None:
    """The registered version of ``method`` (:attr:`nlbench.methods.Method.version`); None if not registered."""
    from nlbench.methods import METHODS

    return METHODS.get(method).version if method in METHODS else None


def is_stale(rec: dict) -> bool:
    """Whether ``rec`` is superseded: made by an older version of its method than the registered one (its
    computation has changed since; records without ``method_version`` are version 1), or made before its method
    had defaults for the record's noise family (the same command now sets those options: another config, whose
    record replaces this one)."""
    from nlbench.methods import METHODS
    from nlbench.noise import noise_family

    method = str(rec.get("method"))
    if method not in METHODS:
        return False
    cls = METHODS.get(method)
    version = rec.get("method_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version < cls.version:
        return True
    options = (rec.get("config") or {}).get("method_options")
    try:
        family = cls.family_defaults.get(noise_family(str(rec.get("noise"))), {})
    except Exception:  # a noise this nlbench does not know: nothing to compare
        return False
    return isinstance(options, dict) and "family_options" not in rec and any(k not in options for k in family)
