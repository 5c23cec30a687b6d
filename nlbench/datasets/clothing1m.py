"""Clothing1M (Xiao et al. 2015) from the official list files.

Data root layout::

    <root>/clothing1m/               the official list files and images/
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.errors import DataError, NLBenchError
from nlbench.options import Range
from nlbench.safe_io import open_regular, read_bounded

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


#: Largest list file read (the official noisy_label_kv.txt is about 50 MB) and largest image, in bytes and pixels.
MAX_LIST_BYTES = 256 * 2**20
MAX_IMAGE_BYTES = 64 * 2**20
MAX_IMAGE_PIXELS = 25_000_000


def _read_lines(path: Path) -> list[str]:
    if not os.path.lexists(path):
        raise DataError(f"missing Clothing1M list file {path}: {CLOTHING1M_FIX}")
    try:  # a regular file of bounded size only: a FIFO or /dev/zero in its place is refused, not read
        text = read_bounded(path, MAX_LIST_BYTES, "Clothing1M list file").decode("utf-8")
    except NLBenchError as e:
        raise DataError(f"{e}: {CLOTHING1M_FIX}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"unreadable Clothing1M list file {path} ({e}): {CLOTHING1M_FIX}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(_read_lines(path), 1):
        parts = line.split()
        # ASCII digits only: str.isdigit() accepts '²', which int() then refuses
        if len(parts) != 2 or not re.fullmatch(r"[0-9]{1,2}", parts[1]) or not 0 <= int(parts[1]) < 14:
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
        with open_regular(path, "Clothing1M image") as raw:
            if os.fstat(raw.fileno()).st_size > MAX_IMAGE_BYTES:
                raise DataError(f"Clothing1M image {path} is larger than {MAX_IMAGE_BYTES:,} bytes; replace the file")
            data = io.BytesIO(raw.read(MAX_IMAGE_BYTES + 1))
    except FileNotFoundError:
        raise DataError(f"missing Clothing1M image {path}: {CLOTHING1M_FIX}") from None
    except NLBenchError as e:
        if not os.path.lexists(path):
            raise DataError(f"missing Clothing1M image {path}: {CLOTHING1M_FIX}") from None
        raise DataError(f"{e}; replace the file") from None
    try:
        with Image.open(data) as im:
            # the header's size, before any pixel is decoded: a small PNG may claim 8000x8000
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"Clothing1M image {path} is {im.size[0]}x{im.size[1]} pixels, over the "
                                f"{MAX_IMAGE_PIXELS:,} allowed; replace the file")
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


@register_dataset("clothing1m", default_model="resnet50")
def clothing1m(root: Path | None, download: bool = False, image_size: Annotated[int, Range(1, 4096)] = 224,
               max_per_split: Annotated[int, Range(1, 10**7)] | None = None,
               max_bytes: Annotated[int, Range(1, 2**50)] = 16 * 2**30) -> Dataset:
    """Clothing1M (Xiao et al. 2015): 1M web images of 14 clothing classes with real noisy labels.

    Reads the official list files in ``<root>/clothing1m/`` (no download: the set is available from its
    authors). Train split: the noisy training list with noisy labels; test split: the clean test list; the meta
set is drawn from the human-verified clean training list (``Dataset.x_meta``), never from the noisy labels. Images
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
    trusted = lists["clean_train"].head(max_per_split)
    need = (len(train) + len(test) + len(trusted)) * 3 * image_size**2
    if need > max_bytes:
        raise DataError(f"clothing1m: {len(train)} + {len(test)} + {len(trusted)} images at "
                        f"{image_size}x{image_size} need "
                        f"{need / 2**30:.1f} GiB in memory (limit {max_bytes / 2**30:.1f} GiB): pass "
                        "max_per_split or a smaller image_size")
    folder = root / "clothing1m"
    return Dataset(
        name="clothing1m",
        x_train=torch.from_numpy(_decode_split(train, image_size)),
        y_train=torch.from_numpy(train.labels.copy()),
        x_test=torch.from_numpy(_decode_split(test, image_size)),
        y_test=torch.from_numpy(test.labels.copy()),
        true_labels=False,
        x_meta=torch.from_numpy(_decode_split(trusted, image_size)),
        y_meta=torch.from_numpy(trusted.labels.copy()),
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
