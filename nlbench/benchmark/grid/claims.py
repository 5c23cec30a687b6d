"""Claims: one driver (or ``nlbench run``) per run and results folder.

A claim is ``<run_name>.claim`` under ``<results_dir>/runs/.claims/`` holding pid, hostname, start time and a
random token, written to a temp file and hard-linked into place (atomic and exclusive like ``O_CREAT | O_EXCL``,
on local file systems and NFS), so it is never seen empty. ``nlbench run`` with a results folder takes the same
claim. The driver holds claims for every run it has queued and refreshes their mtime from a heartbeat thread, so
the TTL measures time since the holder was last seen alive, not the run's length. A claim is stale when its pid
is dead on this host, its heartbeat is older than the TTL (other hosts, or a reused pid), or it is empty or
unreadable (a crash, a full disk); a stale claim is taken over by renaming it away first, so of two drivers
taking over the same claim only one wins. Because a record is written before its claim is removed, a driver
re-checks for the record after claiming, and a run is never executed twice by drivers sharing a results folder.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from nlbench.benchmark.records import (
    TEMP_MARK,
    _host_tag,
    is_orphaned_temp,
    pid_alive,
    read_json_file,
    runs_dir,
)
from nlbench.errors import NLBenchError

CLAIMS_DIR = ".claims"
#: default claim TTL (seconds since the holder's last heartbeat) after which another host may take a run over
DEFAULT_CLAIM_TTL = 3600.0
#: shortest claim TTL accepted: the heartbeat refreshes claims every ttl/4 seconds, at least every second
MIN_CLAIM_TTL = 10.0
#: largest claim file read (real ones are about 120 bytes)
MAX_CLAIM_BYTES = 4096


def check_claim_ttl(ttl: float) -> float:
    """``ttl`` if it is a finite number of seconds >= :data:`MIN_CLAIM_TTL`, else one-line NLBenchError."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl < MIN_CLAIM_TTL:
        raise NLBenchError(f"--claim-ttl must be a finite number of seconds >= {MIN_CLAIM_TTL:g}, got {ttl!r}")
    return float(ttl)


def claims_dir(results_dir: str | os.PathLike) -> Path:
    return runs_dir(results_dir) / CLAIMS_DIR


def claim_path(results_dir: str | os.PathLike, run_name: str) -> Path:
    return claims_dir(results_dir) / f"{run_name}.claim"


#: The pids a claim may hold: positive and within Linux's pid_max limit (2^22), which fits every OS's pid_t.
MIN_PID, MAX_PID = 1, 2**22


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
    if not MIN_PID <= pid <= MAX_PID:  # no process has it (a pid that does not fit the OS type is garbage)
        return True
    # a heartbeat more than a TTL in the future (clock skew between hosts, a forged date) would otherwise
    # never grow old: it counts as stale like one more than a TTL in the past
    if abs(now - mtime) > ttl:
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
