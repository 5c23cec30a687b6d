"""Restricted, bounded unpickling of data files (the CIFAR pickles, the pickle inside CIFAR-N's ``.pt`` archives).

Nothing here unpickles arbitrary objects, nor builds without bound: :class:`_BoundedUnpickler` only knows the few
numpy callables an array needs, each bounded, and checks the sizes of files, arrays, lists and their nesting
(:class:`LoadLimits`); labels must be integers that fit int64 and lie in ``[0, C)`` (:func:`as_labels`).
"""

from __future__ import annotations

import _codecs
import io
import os
import pickle
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlbench.errors import DataError

try:  # numpy >= 2 (numpy 1.26 also ships the _core alias)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray


@dataclass(frozen=True)
class LoadLimits:
    """What one pickled data file may be and build. ``file_bytes``: its size, checked before unpickling;
    ``build_bytes``: the bytes of arrays, byte strings and numpy scalars the allowed callables may make (counted
    before each is made, so a file cannot ask for a huge array); ``items``: list, tuple and dict entries,
    counted as a tree (a list referenced twice counts twice, so memo-shared lists cannot expand without bound
    later); ``depth``: nesting of lists, tuples and dicts. A file also builds at most :data:`BUILD_FACTOR`
    times its own size (what a real pickle builds is at most about twice its size)."""

    file_bytes: int
    build_bytes: int
    items: int
    depth: int


BUILD_FACTOR = 4


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


class _ArrayType:
    """Stands for ``numpy.ndarray`` in a restricted pickle: the type argument of ``_reconstruct``, never called
    (``numpy.ndarray(shape)`` would allocate whatever shape the file asks for)."""

    def __new__(cls, *args, **kwargs):
        raise pickle.UnpicklingError("numpy.ndarray(...) called directly is not allowed")


class _Budget:
    """The bytes one load may still build, and the bounded versions of the callables a pickle may name."""

    def __init__(self, limit: int):
        self.limit, self.left = limit, limit
        budget = self

        class _Array(np.ndarray):  # counts what BUILD (__setstate__) makes: memo-shared data may be copied
            def __setstate__(self, state):
                if not isinstance(state, tuple) or len(state) not in (4, 5):
                    raise pickle.UnpicklingError("malformed array state")
                shape, dtype = state[-4], state[-3]
                budget.take(_array_bytes(shape, dtype), f"an array of shape {shape!r:.60}")
                super().__setstate__(state)

        self.array_type = _Array

    def take(self, n: int, what: str) -> None:
        if n > self.left:
            raise pickle.UnpicklingError(f"{what} needs {_size(n)}, over the {_size(self.limit)} this file may build")
        self.left -= n

    def reconstruct(self, subtype, shape, dtype):
        if subtype is not _ArrayType:
            raise pickle.UnpicklingError("_reconstruct of anything but numpy.ndarray is not allowed")
        self.take(_array_bytes(shape, _multiarray._reconstruct(np.ndarray, (0,), dtype).dtype),
                  f"an array of shape {shape!r:.60}")
        return _multiarray._reconstruct(self.array_type, shape, dtype)

    def scalar(self, dtype, *args):
        if not isinstance(dtype, np.dtype):
            raise pickle.UnpicklingError("numpy scalar of a non-dtype")
        self.take(dtype.itemsize, "a numpy scalar")
        return _multiarray.scalar(dtype, *args)

    def encode(self, obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 text")
        self.take(len(obj), "a byte string")
        return _codecs.encode(obj, encoding, errors)


def _array_bytes(shape, dtype) -> int:
    shape = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    if not (isinstance(shape, tuple | list) and len(shape) <= 32
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"bad array shape {shape!r:.60}")
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError("array state without a dtype")
    if dtype.hasobject:
        raise pickle.UnpicklingError("arrays of Python objects are not allowed")
    n = 1
    for d in shape:
        n *= d
    return n * dtype.itemsize


class _BoundedUnpickler(pickle.Unpickler):
    """Knows only what numpy needs to rebuild an array (and ``_codecs.encode``, which protocol-2 pickles written
    by Python 3 use for ``bytes``), each bounded by a :class:`_Budget`; refuses every other global and every
    persistent id (torch tensor storages)."""

    def __init__(self, file, limits: LoadLimits, size: int, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = _Budget(min(limits.build_bytes, BUILD_FACTOR * size + 2**20))
        b = self.budget
        self.allowed: dict[tuple[str, str], object] = {
            **{(mod, "_reconstruct"): b.reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
            **{(mod, "scalar"): b.scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
            ("numpy", "ndarray"): _ArrayType,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): b.encode,
        }

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("torch tensor storages are not allowed")


def _check_tree(obj: object, limits: LoadLimits) -> None:
    """Raise ``UnpicklingError`` if ``obj`` nests lists, tuples and dicts deeper than ``limits.depth`` or holds
    more than ``limits.items`` entries counted as a tree. Iterative, and stops at the first excess."""
    stack, items = [(obj, 0)], 0
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, list | tuple | dict):
            continue
        if depth >= limits.depth:
            raise pickle.UnpicklingError(f"lists or dicts nested deeper than {limits.depth} levels")
        items += len(node)
        if items > limits.items:
            raise pickle.UnpicklingError(f"more than {limits.items} list or dict entries (shared ones count each "
                                         "time they are used)")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, list | tuple | dict))


def _check_file(path: Path, limits: LoadLimits, what: str, fix: str) -> None:
    """A regular file within ``limits.file_bytes``, checked before anything reads it (a FIFO would block)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"missing {what} {path}: {fix}") from None
    except OSError as e:
        raise DataError(f"unreadable {what} {path} ({e.strerror or e}): {fix}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} {path} is not a regular file: {fix}")
    if st.st_size > limits.file_bytes:
        raise DataError(f"{what} {path} is {_size(st.st_size)}, over the {_size(limits.file_bytes)} such a file may "
                        f"be: {fix}")


def _unpickle(data: io.BufferedIOBase, limits: LoadLimits, size: int, encoding: str) -> object:
    """Unpickle ``size`` bytes with :class:`_BoundedUnpickler`, then check the result with :func:`_check_tree`."""
    obj = _BoundedUnpickler(data, limits, size, encoding=encoding).load()
    _check_tree(obj, limits)
    return obj


_CORRUPT = (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError,
            MemoryError, RecursionError, zipfile.BadZipFile, zlib.error)


def as_labels(value: object, num_classes: int | None, what: str) -> np.ndarray:
    """``value`` (a flat list of integers or an integer array) as int64 labels in ``[0, num_classes)`` (any
    int64 if ``None``); raises :class:`DataError` naming ``what`` otherwise (floats, booleans, nested lists,
    values beyond int64)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise DataError(f"{what} is not integer labels (dtype {value.dtype})")
        if value.size and value.dtype.kind == "u" and value.max() > np.iinfo(np.int64).max:
            raise DataError(f"{what} has a label beyond int64")
        arr = np.asarray(value).astype(np.int64).reshape(-1)
    elif isinstance(value, list | tuple):
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_) for v in value):
            raise DataError(f"{what} is not a flat list of integer labels")
        try:
            arr = np.array(value, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{what} has a label beyond int64") from None
    else:
        raise DataError(f"{what} is not a list of integer labels (got {type(value).__name__})")
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"{what} has labels outside 0..{num_classes - 1}")
    return arr


def _read_torch_zip(path: Path, limits: LoadLimits) -> object:
    """The object a ``torch.save`` archive (a zip holding ``<name>/data.pkl``) holds, read with the bounded
    unpickler: numpy arrays, lists and dicts, no torch tensors (their storages are refused)."""
    with zipfile.ZipFile(path) as zf:
        found = [i for i in zf.infolist() if re.fullmatch(r"[^/]+/data\.pkl", i.filename)]
        if len(found) != 1:
            raise zipfile.BadZipFile("not a torch.save archive: no single <name>/data.pkl")
        if found[0].file_size > limits.file_bytes:
            raise pickle.UnpicklingError(f"its pickle unpacks to {_size(found[0].file_size)}")
        with zf.open(found[0]) as f:
            data = f.read(limits.file_bytes + 1)  # the header's size may lie
    if len(data) > limits.file_bytes:
        raise pickle.UnpicklingError(f"its pickle unpacks to over {_size(limits.file_bytes)}")
    return _unpickle(io.BytesIO(data), limits, len(data), "latin1")
