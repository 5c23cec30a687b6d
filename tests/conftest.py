"""Shared fixtures: fake Fashion-MNIST files in the real on-disk format (torchvision ``inject_fake_data`` style).

Nothing here downloads or reads /usr/share/datasets: every test that needs Fashion-MNIST gets a tiny, valid set
of gzipped IDX files in ``tmp_path`` and the loader's expected counts patched to match.
"""

from __future__ import annotations

import gzip
import signal
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

# A test run started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and every process
# it spawns would inherit that too, so the tests that press Ctrl-C on a subprocess would test nothing. A handler
# (unlike "ignore") is reset to the default across exec, so the subprocesses get Ctrl-C back.
signal.signal(signal.SIGINT, signal.default_int_handler)

N_TRAIN, N_TEST = 200, 50
FMNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An uncompressed IDX ubyte file: big-endian magic (0x0800 | ndim), big-endian dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, truncate: int = 0,
              gz: bool = True) -> Path:
    """Write ``array`` as a (gzipped) IDX file, optionally with a wrong ``magic`` or the last ``truncate`` payload
    bytes cut off (a valid gzip stream around a short IDX payload)."""
    data = idx_bytes(array, magic)
    if truncate:
        data = data[:-truncate]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def fake_arrays(n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images and labels cycling through all 10 classes (then shuffled)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return out


@dataclass
class FakeFMNIST:
    """A folder of fake Fashion-MNIST files and the arrays written into it."""

    root: Path
    arrays: dict[str, np.ndarray]

    def path(self, key: str) -> Path:
        return self.root / FMNIST_NAMES[key]

    def truncate(self, key: str, nbytes: int = 100) -> Path:
        """Rewrite file ``key`` with its last ``nbytes`` payload bytes missing (gzip intact)."""
        return write_idx(self.path(key), self.arrays[key], truncate=nbytes)

    def cut_gzip(self, key: str) -> Path:
        """Cut the gzip stream of file ``key`` in half (a download interrupted mid-file)."""
        p = self.path(key)
        raw = p.read_bytes()
        p.write_bytes(raw[: len(raw) // 2])
        return p

    def wrong_magic(self, key: str, magic: int = 0x0903) -> Path:
        """Rewrite file ``key`` with another magic number (default: type 0x09, signed bytes, not ubyte)."""
        return write_idx(self.path(key), self.arrays[key], magic=magic)


def write_fake_fmnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> FakeFMNIST:
    arrays = fake_arrays(n_train, n_test)
    for key, name in FMNIST_NAMES.items():
        write_idx(root / name, arrays[key])
    return FakeFMNIST(root, arrays)


@pytest.fixture
def fmnist_counts(monkeypatch):
    """Patch the loader's expected counts (60000/10000) to the fake sizes; the real check stays in the code."""
    from nlbench.datasets import fashion_mnist

    for key, (name, _) in list(fashion_mnist.FILES.items()):
        monkeypatch.setitem(fashion_mnist.FILES, key, (name, N_TRAIN if key.startswith("train") else N_TEST))


@pytest.fixture
def fake_fmnist(tmp_path, fmnist_counts) -> FakeFMNIST:
    """A data root holding 200 train and 50 test fake Fashion-MNIST images covering all 10 classes."""
    return write_fake_fmnist(tmp_path / "data")
