"""CIFAR-10/100 from torchvision's pickles (read with :mod:`nlbench.datasets.safe_pickle`).

Data root layout (each loader names the file it misses and what to do)::

    <root>/cifar-10-batches-py/      data_batch_1..5, test_batch, batches.meta   (torchvision's layout)
    <root>/cifar-100-python/         train, test, meta
    <root>/cifar-n/                  the CIFAR-N human labels (:mod:`nlbench.datasets.cifarn`), optional
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.datasets.cifarn import CIFAR10N_NOISES, CIFAR100N_NOISES, _LazyCifarN
from nlbench.datasets.safe_pickle import _CORRUPT, LoadLimits, _check_file, _unpickle, as_labels
from nlbench.errors import DataError

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

#: torchvision's CIFAR pickles: batches of 31 MB, CIFAR-100's ``train`` 155 MB (153.6 MB of pixels).
CIFAR_LIMITS = LoadLimits(file_bytes=256 * 2**20, build_bytes=512 * 2**20, items=1_000_000, depth=8)


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
