"""Label and data files are untrusted input: a loader builds only what is bounded, and refuses the rest in one line.

The restricted unpickler already refuses code execution (tests/test_datasets_cifar.py). These files are
resource bombs instead: a few bytes that would build without bound (a self-nested list, memo-shared lists that
flatten to 2**40 labels, a numpy array of 8 TiB, one string encoded a million times), labels that do not fit
int64 or lie outside ``[0, C)``, files too large or not files at all. Each must give one :class:`DataError` line
naming the file, within seconds (an alarm fails the test instead of letting it hang or swap).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nlbench.cli import app
from nlbench.datasets import load_dataset
from nlbench.datasets.cifar import CIFAR10_CLASSES, CIFAR_LIMITS
from nlbench.datasets.cifarn import CIFAR10N_KEYS, CIFAR_N_LIMITS, load_cifar_n
from nlbench.errors import DataError

N = 15  # fake CIFAR-10: 5 training batches of 3 images, 3 test images


@contextlib.contextmanager
def within(seconds: float = 5):
    """Fail the test (rather than hang, or eat the machine's memory) if the block takes longer."""
    def expire(signum, frame):
        raise TimeoutError(f"loading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - t0 < seconds


# --------------------------------------------------------------------------------------------- hostile objects


def self_nested() -> list:
    x: list = []
    x.append(x)
    return x


def memo_bomb(depth: int = 40) -> list:
    """A few hundred bytes pickled (the pickle memo shares each level); 2**depth labels once flattened."""
    x: list = [0]
    for _ in range(depth):
        x = [x, x]
    return x


class Reduce:
    """Pickles as ``func(*args)``: how a hostile file asks an allowed numpy callable for something huge."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct

HUGE_SHAPE = Reduce(_reconstruct, np.ndarray, (2**40,), b"f8")  # 8 TiB
HUGE_NDARRAY = Reduce(np.ndarray, (2**40,), np.dtype("f8"))  # numpy.ndarray(shape) called directly


def encode_bomb() -> list:
    """One 1 MiB string, memo-shared, handed to ``_codecs.encode`` 2000 times: 2 GiB from a 1 MiB file."""
    import _codecs

    text = "a" * 2**20
    return [Reduce(_codecs.encode, text, "latin1") for _ in range(2000)]


HOSTILE = {
    "self-nested list": (self_nested(), "nested deeper than 8 levels"),
    "memo-shared lists": (memo_bomb(), "nested deeper than 8 levels"),
    "wide memo-shared lists": ([[0] * 2000] * 2000, "more than"),
    "numpy reconstructor, huge shape": (HUGE_SHAPE, "an array of shape (1099511627776,) needs 8192.0 GiB"),
    "numpy.ndarray called directly": (HUGE_NDARRAY, "numpy.ndarray(...) called directly is not allowed"),
    "encoded string, many times": (encode_bomb(), "a byte string needs 1.0 MiB, over the"),
}


# ------------------------------------------------------------------------------------------------ writers


def write_cifar10(root: Path, labels: object = None) -> Path:
    """torchvision's layout with fake images; ``labels`` replaces the first batch's labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        part = (np.arange(i * 3, i * 3 + 3) % 10).tolist()
        batch = {b"labels": labels if i == 0 and labels is not None else part,
                 b"data": np.zeros((3, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder / "data_batch_1"


def write_cifar_n(path: Path, **override) -> Path:
    labels = {k: np.arange(N) % 10 for k in CIFAR10N_KEYS}
    labels.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(labels, path)
    return path


def assert_one_line(err: pytest.ExceptionInfo, path: Path, fragment: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and fragment in msg, msg


# ------------------------------------------------------------------------------------------------- CIFAR-N


@pytest.mark.parametrize("what", list(HOSTILE))
def test_cifar_n_resource_bombs_are_refused_in_one_line(tmp_path, what):
    obj, fragment = HOSTILE[what]
    path = write_cifar_n(tmp_path / "CIFAR-10_human.pt", worse_label=obj)
    assert path.stat().st_size < 3 * 2**20  # the bomb is small
    with within(5), pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, "refused by the safe loader")
    assert fragment in str(err.value)


@pytest.mark.parametrize("labels, fragment", [
    ([2**70] + [0] * (N - 1), "has a label beyond int64"),
    (np.full(N, 2**64 - 1, dtype=np.uint64), "has a label beyond int64"),
    (np.arange(N) % 10 + 0.5, "is not integer labels (dtype float64)"),
    ([True] * N, "is not a flat list of integer labels"),
    ([[1]] * N, "is not a flat list of integer labels"),
    (np.arange(N) - 1, "has labels outside 0..9"),
    (np.arange(N) + 10, "has labels outside 0..9"),
    ("0123", "is not a list of integer labels (got str)"),
])
def test_cifar_n_labels_must_be_int64_in_range(tmp_path, labels, fragment):
    path = write_cifar_n(tmp_path / "CIFAR-10_human.pt", random_label3=labels)
    with within(5), pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, fragment)


def test_cifar_n_extra_keys_are_range_checked_too(tmp_path):
    path = write_cifar_n(tmp_path / "CIFAR-10_human.pt", side_info=np.arange(N) * 1000)
    with pytest.raises(DataError, match="'side_info' has labels outside 0..9"):
        load_cifar_n(path, expected_len=N)


def test_cifar_n_file_size_checked_before_unpickling(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    with open(path, "wb") as f:
        f.truncate(2**30)  # 1 GiB, sparse
    with within(2), pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, f"is 1.0 GiB, over the {CIFAR_N_LIMITS.file_bytes // 2**20}.0 MiB such a file may be")


def test_cifar_n_zip_bomb_is_refused(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"(" * (64 * 2**20))  # 64 MiB deflates to ~64 KiB
    assert path.stat().st_size < 2**20
    with within(5), pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, "its pickle unpacks to 64.0 MiB")


def test_cifar_n_fifo_refused_without_blocking(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    os.mkfifo(path)
    with within(2), pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, "is not a regular file")


def test_cifar_n_tensors_and_legacy_archives_refused(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({k: torch.arange(N) % 10 for k in CIFAR10N_KEYS}, path)
    with pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, "refused by the safe loader (global torch._utils._rebuild_tensor_v2 is not allowed)")
    torch.save({k: np.arange(N) % 10 for k in CIFAR10N_KEYS}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=N)
    assert_one_line(err, path, "not a torch.save zip archive")


def test_valid_cifar_n_still_loads(tmp_path):
    path = write_cifar_n(tmp_path / "CIFAR-10_human.pt", aggre_label=(np.arange(N) % 10).tolist())
    labels = load_cifar_n(path, expected_len=N)
    assert set(labels) == set(CIFAR10N_KEYS)
    assert all(v.dtype == np.int64 and v.tolist() == (np.arange(N) % 10).tolist() for v in labels.values())


def test_noise_show_gives_one_error_line_for_a_bomb(tmp_path):
    write_cifar10(tmp_path)
    write_cifar_n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", worse_label=memo_bomb())
    with within(20):
        res = CliRunner().invoke(app, ["noise", "show", "cifar10n-worst", "--dataset", "cifar10", "--data-root",
                                       str(tmp_path), "--data-opt", f"expected_sizes=[{N},3]", "--meta-size", "0"])
    assert res.exit_code == 2 and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-N file ") and "nested deeper than 8" in lines[0]


# ------------------------------------------------------------------------------------------- CIFAR pickles


@pytest.mark.parametrize("what", list(HOSTILE))
def test_cifar_batch_resource_bombs_are_refused_in_one_line(tmp_path, what):
    obj, fragment = HOSTILE[what]
    path = write_cifar10(tmp_path, labels=obj)
    with within(5), pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, expected_sizes=None)
    assert_one_line(err, path, "refused or corrupted CIFAR pickle")
    assert fragment in str(err.value)


@pytest.mark.parametrize("labels, fragment", [
    ([2**70, 0, 1], "'labels' has a label beyond int64"),
    ([0.5, 1.0, 2.0], "'labels' is not a flat list of integer labels"),
    ([0, 1, 10], "labels outside 0..9"),
])
def test_cifar_batch_labels_must_be_int64_in_range(tmp_path, labels, fragment):
    write_cifar10(tmp_path, labels=labels)
    with within(5), pytest.raises(DataError, match="corrupted CIFAR pickle") as err:
        load_dataset("cifar10", tmp_path, expected_sizes=None)
    assert "\n" not in str(err.value) and fragment in str(err.value)


def test_cifar_class_names_must_be_short_text(tmp_path):
    write_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": [memo_bomb(5)] + [c.encode() for c in CIFAR10_CLASSES[1:]]}))
    with within(5), pytest.raises(DataError, match="'label_names' is not a list of 10 names"):
        load_dataset("cifar10", tmp_path, expected_sizes=None)


def test_cifar_batch_size_checked_before_unpickling(tmp_path):
    path = write_cifar10(tmp_path)
    with open(path, "wb") as f:
        f.truncate(CIFAR_LIMITS.file_bytes + 1)
    with within(2), pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path, expected_sizes=None)
    assert_one_line(err, path, "such a file may be")
