"""Fashion-MNIST from the standard gzipped IDX files.

Search order: the data root (``--data-root`` / ``$NLBENCH_DATA_ROOT``, where the files may sit directly, in a
``fashion-mnist/`` sub-folder or in torchvision's ``FashionMNIST/raw/``), else Debian's ``dataset-fashion-mnist``
in /usr/share/datasets/fashion-mnist, else, with ``download=True``, torchvision's downloader into the data root.
An explicit root is never silently swapped for the Debian copy: if it lacks the files, that is an error (unless
``download=True``). The expected item counts live in :data:`FILES` (tests patch them to read tiny fake files).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import DEBIAN_DATASETS, Dataset, balanced_subsample
from nlbench.errors import DataError, NLBenchError
from nlbench.options import Range
from nlbench.safe_io import read_maybe_gzip

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", 60000),
    "train_labels": ("train-labels-idx1-ubyte.gz", 60000),
    "test_images": ("t10k-images-idx3-ubyte.gz", 10000),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", 10000),
}

#: nlbench's ``asymNN`` map for Fashion-MNIST: each class goes to its most confusable look-alike, from the
#: confusion of a clean-trained classifier: T-shirt/top <-> Shirt, Pullover <-> Coat, Sandal -> Sneaker,
#: Sneaker <-> Ankle boot. Trouser, Dress and Bag stay clean. Applied simultaneously from the true labels, so
#: every mapped class loses exactly the nominal share (no chained flips, cf. ELR#16).
ASYM_MAP = {0: 6, 6: 0, 2: 4, 4: 2, 5: 7, 7: 9, 9: 7}

#: Largest IDX file read, compressed or inflated (the training images inflate to 47,040,016 bytes).
MAX_IDX_BYTES = 64 * 2**20
_MAGIC = {1: 2049, 3: 2051}  # IDX magic for ubyte data of 1 (labels) and 3 (images) dimensions
FIX = ("install Debian's package (apt-get install dataset-fashion-mnist), point --data-root at a folder "
       "with the four .gz files, or pass --download")


def read_idx(path: Path, expected_count: int | None = None, ndim: int | None = None) -> np.ndarray:
    """Read a gzipped (or plain) IDX ubyte file into a uint8 array, checking magic number, ``ndim`` (1 for
    labels, 3 for images, if given), size and ``expected_count`` items."""
    if not path.exists():
        raise DataError(f"missing data file {path}: {FIX}")
    # bounded: a real file inflates to its header and expected_count items of 28x28 (images) or 1 byte (labels);
    # a gzip bomb, a FIFO or /dev/zero in its place is refused, not read
    limit = MAX_IDX_BYTES if expected_count is None else 16 + expected_count * (28 * 28 if ndim != 1 else 1)
    try:
        raw = read_maybe_gzip(path, MAX_IDX_BYTES, min(limit, MAX_IDX_BYTES), "data file")
    except NLBenchError as e:
        raise DataError(f"corrupted data file {path} ({str(e).replace(f'data file {path} ', '')}): delete it "
                        f"and {FIX}") from None
    if len(raw) < 8:
        raise DataError(f"truncated data file {path} ({len(raw)} bytes): delete it and {FIX}")
    magic = struct.unpack(">I", raw[:4])[0]
    ndim_found = magic & 0xFF
    if (magic >> 8) != 0x08 or ndim_found not in _MAGIC:
        raise DataError(f"data file {path} has wrong magic number {magic:#x} (not a ubyte IDX file): {FIX}")
    if ndim is not None and ndim_found != ndim:
        raise DataError(f"data file {path} has magic number {magic} ({ndim_found}-d), expected {_MAGIC[ndim]} "
                        f"({ndim}-d): {FIX}")
    header = 4 + 4 * ndim_found
    if len(raw) < header:
        raise DataError(f"truncated data file {path} ({len(raw)} bytes, header alone is {header}): delete it "
                        f"and {FIX}")
    dims = struct.unpack(f">{ndim_found}I", raw[4:header])
    n = math.prod(dims)
    if len(raw) - header != n:
        what = "truncated" if len(raw) - header < n else "oversized"
        raise DataError(f"{what} data file {path}: {len(raw) - header} of {n} bytes; delete it and {FIX}")
    if expected_count is not None and dims[0] != expected_count:
        raise DataError(f"data file {path} holds {dims[0]} items, expected {expected_count}: {FIX}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_folder(root: Path | None, download: bool) -> Path:
    names = [name for name, _ in FILES.values()]
    # root/FashionMNIST/raw is where torchvision's downloader leaves the .gz files: without it a root filled
    # by --download would be "missing" the files on the next run without --download.
    candidates = ([root, root / "fashion-mnist", root / "FashionMNIST" / "raw"] if root is not None
                  else [DEBIAN_DATASETS / "fashion-mnist"])
    for folder in candidates:
        if all((folder / n).exists() for n in names):
            return folder
    if download:
        if root is None:
            raise DataError("--download needs a --data-root to download Fashion-MNIST into")
        import torchvision  # deferred: only users with internet reach this

        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    where = candidates[0]
    missing = next(n for n in names if not (where / n).exists())
    also = f" (also looked in {', '.join(str(c) for c in candidates[1:])})" if len(candidates) > 1 else ""
    raise DataError(f"missing data file {where / missing}{also}: {FIX}")


@register_dataset("fashion-mnist", default_model="lenet")
def fashion_mnist(root: Path | None, download: bool = False,
                  train_size: Annotated[int, Range(10, 60000)] | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28x28 images of 10 clothing classes.

    ``train_size`` keeps a class-balanced subsample of the training split (the test split stays whole). It is
    drawn from a fixed stream, so it is part of the dataset's definition and the same for every seed; the meta
    set, validation split and noisy pool are then carved from it as usual. A smaller pool memorises its noisy
    labels sooner and costs less per epoch (the memorisation protocol uses it).
    """
    folder = _find_folder(root, download)
    arrays = {key: read_idx(folder / name, count, ndim=3 if key.endswith("images") else 1)
              for key, (name, count) in FILES.items()}
    x, y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    info = {"source": str(folder)}
    if train_size is not None:
        if not 10 <= train_size <= len(y):
            raise NLBenchError(f"fashion-mnist: train_size must be between 10 and {len(y)}, got {train_size}")
        keep = balanced_subsample(y, int(train_size), len(CLASSES), np.random.default_rng([0xF3, int(train_size)]))
        x, y = x[keep], y[keep]
        info["subsample"] = f"{len(keep)} of {len(arrays['train_labels'])}, class-balanced, fixed stream"
    return Dataset(
        name="fashion-mnist",
        x_train=torch.from_numpy(x.copy()).unsqueeze(1),
        y_train=torch.from_numpy(y),
        x_test=torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        y_test=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        classes=list(CLASSES),
        mean=(0.2860,),
        std=(0.3530,),
        asym_map=dict(ASYM_MAP),
        info=info,
    )
