"""Mid-run checkpoints: everything a run needs to continue bit for bit from the end of an epoch.

A checkpoint holds the models' and optimisers' states, the method's state, every random stream (the harness's
generators, the method's, torch's global one), the step counter, the history so far and the wall time spent.
It is written atomically at the end of every epoch to ``<results>/checkpoints/<run_name>.pt``, removed once the
run's record is written, and loaded with ``torch.load(weights_only=True)``: a results folder is untrusted input,
and a full unpickler would run any code a shared checkpoint carries. A checkpoint whose config hash, shape or
content does not fit the run is ignored with a warning (the run starts over), never trusted.

The method's state is captured generically from its attributes (:func:`capture`): tensors, modules and
optimisers (their state dicts), torch and NumPy generators (their states) and plain Python values. A method
holding anything else overrides ``Method.state_dict`` / ``Method.load_state_dict``.
"""

from __future__ import annotations

import copy
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlbench.benchmark.records import atomic_write
from nlbench.errors import NLBenchError
from nlbench.safe_io import open_regular

CHECKPOINTS_DIR = "checkpoints"
SUFFIX = ".pt"
#: Format of the checkpoint file; a checkpoint of another format is ignored.
FORMAT = 1
#: Largest checkpoint file read (a ResNet-50 with SGD momentum and a method's per-sample state is ~0.3 GB).
MAX_CHECKPOINT_BYTES = 4 * 2**30
#: Attributes never captured: the context (data, the model factory) is rebuilt by the harness on resume.
_SKIP = frozenset({"ctx"})


def checkpoints_dir(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / CHECKPOINTS_DIR


def checkpoint_path(folder: str | os.PathLike, run_name: str) -> Path:
    return Path(folder) / f"{run_name}{SUFFIX}"


def scan_checkpoints(results_dir: str | os.PathLike, finished: set[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(resumable, problems)`` of ``results_dir/checkpoints/``: checkpoints of runs without a record (a rerun
    continues them), and what does not belong there: a checkpoint of a run in ``finished`` (run names with a
    valid record; it should have been removed with the record), a file that is not a checkpoint, an orphaned
    temp file."""
    from nlbench.benchmark.records import TEMP_MARK, is_orphaned_temp

    folder = checkpoints_dir(results_dir)
    resumable: list[Path] = []
    problems: list[tuple[Path, str]] = []
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() and not folder.is_symlink() else []
    except OSError as e:
        return [], [(folder, f"unreadable folder ({e.strerror or e})")]
    for p in entries:
        if p.name.startswith(".") and TEMP_MARK in p.name:
            if is_orphaned_temp(p):
                problems.append((p, "orphaned temp file"))
            continue
        try:
            regular = stat.S_ISREG(p.lstat().st_mode)
        except OSError:
            continue
        if not regular or not p.name.endswith(SUFFIX):
            problems.append((p, "not a checkpoint"))
        elif p.name[:-len(SUFFIX)] in finished:
            problems.append((p, "orphaned checkpoint (its run has a record)"))
        else:
            resumable.append(p)
    return resumable, problems


class UnsupportedState(TypeError):
    """A method attribute that :func:`capture` cannot save."""


_MISSING = object()


def _tree(value: Any) -> Any:
    """A copy of a tree of plain values and tensors (tensors detached and cloned), or ``_MISSING`` if it holds
    anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list | tuple):
        items = [_tree(v) for v in value]
        return _MISSING if any(v is _MISSING for v in items) else type(value)(items)
    if isinstance(value, dict) and all(isinstance(k, str | int) for k in value):
        items = {k: _tree(v) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in items.values()) else items
    return _MISSING


def capture(obj: Any) -> dict[str, Any]:
    """The state of ``obj``'s attributes as a dict that ``torch.load(weights_only=True)`` can read back.

    Modules and optimisers give their ``state_dict``; torch generators their state; NumPy generators their bit
    generator's state; NumPy arrays become tensors; trees (lists, tuples, dicts) of plain Python values and
    tensors are copied, tensors cloned.
    Anything else raises :class:`UnsupportedState` naming the attribute.
    """
    out: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in _SKIP or callable(value) and not isinstance(value, nn.Module | torch.optim.Optimizer):
            continue
        if isinstance(value, nn.Module):
            out[name] = ("module", {k: v.detach().clone() for k, v in value.state_dict().items()})
        elif isinstance(value, torch.optim.Optimizer):
            out[name] = ("optimizer", copy.deepcopy(value.state_dict()))
        elif isinstance(value, torch.Generator):
            out[name] = ("generator", value.get_state())
        elif isinstance(value, np.random.Generator):
            out[name] = ("numpy-generator", copy.deepcopy(value.bit_generator.state))
        elif isinstance(value, np.ndarray) and value.dtype != object:
            out[name] = ("ndarray", torch.from_numpy(np.ascontiguousarray(value).copy()))
        elif (tree := _tree(value)) is not _MISSING:
            out[name] = ("tree", tree)
        else:
            raise UnsupportedState(f"{type(obj).__name__}.{name} ({type(value).__name__}) cannot be checkpointed; "
                                   "override state_dict/load_state_dict")
    return out


_KIND_TYPES: dict[str, Any] = {"module": nn.Module, "optimizer": torch.optim.Optimizer,
                               "generator": torch.Generator, "numpy-generator": np.random.Generator}


def restore(obj: Any, state: dict[str, Any]) -> None:
    """Put a :func:`capture` state back into ``obj`` (modules and optimisers load in place).

    A checkpoint is untrusted: it may only set instance attributes :func:`capture` could have saved. A name
    that is private (``__x``), or that the class defines (``oracle``, ``uses_meta``, ``step``...) without the
    instance holding its own value, is refused, and so is a kind that does not fit the attribute's current
    value (a tree where a module is)."""
    if not isinstance(state, dict):
        raise ValueError(f"method state is a {type(state).__name__}, not a dict")
    own = vars(obj)
    for name, entry in state.items():
        if not isinstance(name, str) or name.startswith("__") or name in _SKIP:
            raise ValueError(f"checkpoint sets the attribute {str(name)[:40]!r}, which no checkpoint may")
        if name not in own and hasattr(type(obj), name):
            raise ValueError(f"checkpoint sets {type(obj).__name__}.{name}, a class attribute, not run state")
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise ValueError(f"state of {name!r} is not a (kind, value) pair")
        kind, value = entry
        current = own.get(name)
        if kind in _KIND_TYPES and not isinstance(current, _KIND_TYPES[kind]):
            raise ValueError(f"checkpoint holds a {kind} for {name!r}, which is a {type(current).__name__} here")
        if kind in ("ndarray", "tree") and isinstance(current, tuple(_KIND_TYPES.values())):
            raise ValueError(f"checkpoint holds a {kind} for {name!r}, which is a {type(current).__name__} here")
        if kind == "ndarray" and not isinstance(value, torch.Tensor):
            raise ValueError(f"state of {name!r} is not a tensor")
        if kind == "module" or kind == "optimizer":
            current.load_state_dict(value)
        elif kind == "generator":
            current.set_state(value)
        elif kind == "numpy-generator":
            current.bit_generator.state = value
        elif kind == "ndarray":
            setattr(obj, name, value.numpy())
        elif kind == "tree":
            setattr(obj, name, value)
        else:
            raise ValueError(f"unknown state kind {kind!r} for {name!r}")


def run_state(config_hash: str, *, model: nn.Module, networks: list[nn.Module], optimizer: torch.optim.Optimizer,
              method: Any, generators: dict[str, torch.Generator], view: Any, device: torch.device,
              history: list[dict], step: int, wall_s: float) -> dict[str, Any]:
    """Everything the harness's loop needs to continue after the epoch that just ended."""
    return {
        "config_hash": config_hash, "model": model.state_dict(), "networks": [n.state_dict() for n in networks],
        "optimizer": optimizer.state_dict(), "method": method.state_dict(),
        "generators": {k: g.get_state() for k, g in generators.items()}, "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "view": None if view is None else capture(view), "history": history, "step": step, "wall_s": wall_s}


def restore_run(state: dict[str, Any], *, model: nn.Module, networks: list[nn.Module],
                optimizer: torch.optim.Optimizer, method: Any, generators: dict[str, torch.Generator], view: Any,
                device: torch.device) -> None:
    """Load a :func:`run_state` into a freshly set-up run (raises if it does not fit)."""
    model.load_state_dict(state["model"])
    if len(state["networks"]) != len(networks):
        raise ValueError(f"{len(state['networks'])} extra networks saved, the method has {len(networks)}")
    for net, sd in zip(networks, state["networks"], strict=True):
        net.load_state_dict(sd)
    optimizer.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    for key, g in generators.items():  # generator states are CPU byte tensors, whatever the device
        g.set_state(state["generators"][key].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    if view is not None and state.get("view") is not None:
        restore(view, state["view"])
    check_progress(state)


#: Keys of a history entry whose values must be in [0, 1] (accuracies and rates), as the record schema has them.
_UNIT_KEYS = ("test_acc", "val_acc", "w_auroc", "w_noisy_below_0.1")


def check_progress(state: dict[str, Any], epochs: int | None = None) -> None:
    """Raise ``ValueError`` unless the checkpoint's progress is that of a run of ``epochs`` epochs stopped at
    the end of an epoch: ``history`` a list of one entry per finished epoch (numbered 1, 2, ... and fewer than
    ``epochs``, since the last epoch writes a record, not a checkpoint), each a dict of plain finite numbers
    (NaN or null where missing) with accuracies in [0, 1]; ``step`` an integer at least the number of epochs;
    ``wall_s`` a finite non-negative number. A history of tensors, strings or a forged 100% is refused here,
    before any record is built from it."""
    history, step, wall = state.get("history"), state.get("step"), state.get("wall_s")
    if not isinstance(history, list):
        raise ValueError(f"history is a {type(history).__name__}, not a list")
    if epochs is not None and len(history) >= epochs:
        raise ValueError(f"history has {len(history)} epochs; a checkpoint of a {epochs}-epoch run has fewer")
    for i, entry in enumerate(history, 1):
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ValueError(f"history entry {i} is not a table")
        for k, v in entry.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or math.isinf(v)):
                raise ValueError(f"history entry {i}: {k[:40]} is {type(v).__name__} {str(v)[:40]}, not a number")
        if entry.get("epoch") != i or isinstance(entry.get("epoch"), bool):
            raise ValueError(f"history entry {i} is numbered {str(entry.get('epoch'))[:20]}")
        for k in _UNIT_KEYS:
            if entry.get(k) is not None and not math.isnan(entry[k]) and not 0 <= entry[k] <= 1:
                raise ValueError(f"history entry {i}: {k} {entry[k]} is outside [0, 1]")
        if not isinstance(entry.get("test_acc"), int | float) or math.isnan(entry["test_acc"]):
            raise ValueError(f"history entry {i} has no test_acc")
    if isinstance(step, bool) or not isinstance(step, int) or not len(history) <= step < 2**62:
        raise ValueError(f"step {str(step)[:40]} is not an integer >= {len(history)}")
    if isinstance(wall, bool) or not isinstance(wall, int | float) or not math.isfinite(wall) or wall < 0:
        raise ValueError(f"wall_s {str(wall)[:40]} is not a finite number of seconds")


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load(path: Path, config_hash: str, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it is a regular file of a sane size, of this format and of this config;
    else ``None`` (with a warning on stderr when a file was there but unusable)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    reason = None
    if not stat.S_ISREG(info.st_mode):
        reason = "not a regular file"
    elif info.st_size > MAX_CHECKPOINT_BYTES:
        reason = f"larger than {MAX_CHECKPOINT_BYTES} bytes"
    elif (inflated := _inflated_problem(path)) is not None:
        reason = inflated
    else:
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # anything a damaged or hostile file raises: the run starts over
            reason = f"unreadable ({type(e).__name__})"
        else:
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                reason = "of another format"
            elif state.get("config_hash") != config_hash:
                reason = "of another config"
            else:
                return state
    print(f"warning: ignoring checkpoint {path} ({reason}); the run starts from epoch 1", file=sys.stderr)
    return None


def _inflated_problem(path: Path) -> str | None:
    """Why the checkpoint's zip archive is refused before torch reads it, else ``None``: the cap on the file
    also caps what its members inflate to (a 2.6 MB deflated member can claim 2 GiB), and only torch's zip
    format is read (checked on a non-blocking descriptor of a regular file)."""
    import zipfile

    try:
        with open_regular(path, "checkpoint") as raw, zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
            if len(infos) > 100_000:
                return "holding over 100,000 members"
            total = sum(i.file_size for i in infos)
    except (NLBenchError, OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
        return f"not a torch zip archive ({type(e).__name__})"
    if total > MAX_CHECKPOINT_BYTES:
        return f"inflating to {total:,} bytes, over {MAX_CHECKPOINT_BYTES:,}"
    return None


def remove(path: Path | None) -> None:
    """Delete a checkpoint; what is in its place and cannot be deleted (a directory, a read-only folder) is
    reported on stderr, never raised: the record is already written."""
    if path is None:
        return
    try:
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            print(f"warning: {path} is a directory where a checkpoint goes; left in place", file=sys.stderr)
    except OSError as e:
        print(f"warning: cannot remove checkpoint {path}: {e.strerror or e}", file=sys.stderr)
