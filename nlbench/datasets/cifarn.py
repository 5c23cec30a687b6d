"""The CIFAR-N human labels (Wei et al. 2022), read safely and lazily.

Data root layout (optional)::

    <root>/cifar-n/                  CIFAR-10_human.pt, CIFAR-100_human.pt   (UCSC-REAL/cifar-10-100n, data/)

The pickle inside each ``torch.save`` archive goes through :mod:`nlbench.datasets.safe_pickle`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nlbench.datasets.safe_pickle import _CORRUPT, LoadLimits, _check_file, _read_torch_zip, as_labels
from nlbench.errors import DataError
from nlbench.noise.human import register_label_set

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
# the label sets are noise kinds that this dataset supplies (the noise package knows no dataset)
for _name in (*CIFAR10N_NOISES, *CIFAR100N_NOISES):
    register_label_set(_name, "CIFAR-N, Wei et al. 2022")
CIFAR10N_KEYS = ("clean_label", "aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
CIFAR100N_KEYS = ("clean_label", "noisy_label")

#: CIFAR-N label files: 1 MB (CIFAR-100N) and 2.4 MB (CIFAR-10N), dicts of flat label arrays or lists.
CIFAR_N_LIMITS = LoadLimits(file_bytes=32 * 2**20, build_bytes=128 * 2**20, items=2_000_000, depth=8)


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
