"""The Fashion-MNIST IDX loader on fake files: round-trip, integrity errors, data-root resolution, download."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from conftest import FMNIST_NAMES, N_TEST, N_TRAIN, write_fake_fmnist, write_idx

from nlbench.datasets import fashion_mnist as fm
from nlbench.datasets import load_dataset
from nlbench.errors import DataError


def test_loader_round_trips_the_fake_files(fake_fmnist):
    ds = load_dataset("fashion-mnist", fake_fmnist.root)
    assert ds.x_train.shape == (N_TRAIN, 1, 28, 28) and ds.x_test.shape == (N_TEST, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    assert ds.y_train.shape == (N_TRAIN,) and ds.y_test.shape == (N_TEST,)
    a = fake_fmnist.arrays
    assert np.array_equal(ds.x_train[:, 0].numpy(), a["train_images"])
    assert np.array_equal(ds.x_test[:, 0].numpy(), a["test_images"])
    assert np.array_equal(ds.y_train.numpy(), a["train_labels"])
    assert np.array_equal(ds.y_test.numpy(), a["test_labels"])
    assert np.bincount(ds.y_train.numpy()).tolist() == [20] * 10
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.asym_map == fm.ASYM_MAP
    assert ds.info["source"] == str(fake_fmnist.root)


def test_files_in_a_fashion_mnist_subfolder_are_found(tmp_path, fmnist_counts):
    fake = write_fake_fmnist(tmp_path / "root" / "fashion-mnist")
    ds = load_dataset("fashion-mnist", tmp_path / "root")
    assert ds.info["source"] == str(fake.root)


def test_read_idx_plain_file(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=False)
    out = fm.read_idx(path, expected_count=2, ndim=3)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, arr)


def test_real_counts_are_still_checked(tmp_path):
    """Without the test patch the loader insists on 60000/10000: tiny files are rejected."""
    fake = write_fake_fmnist(tmp_path)
    with pytest.raises(DataError, match=r"holds 200 items, expected 60000"):
        load_dataset("fashion-mnist", fake.root)


@pytest.mark.parametrize("key", ["train_images", "test_labels"])
def test_truncated_payload_names_the_file(fake_fmnist, key):
    path = fake_fmnist.truncate(key, 7)
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", fake_fmnist.root)
    msg = str(e.value)
    assert msg.startswith(f"truncated data file {path}: ")
    n = fake_fmnist.arrays[key].size
    assert f"{n - 7} of {n} bytes" in msg


def test_cut_gzip_stream_names_the_file(fake_fmnist):
    path = fake_fmnist.cut_gzip("train_labels")
    with pytest.raises(DataError, match=rf"^corrupted data file {path} \("):
        load_dataset("fashion-mnist", fake_fmnist.root)


def test_header_shorter_than_its_dims_is_truncated(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00"))
    with pytest.raises(DataError, match=r"truncated data file .*short.gz \(9 bytes, header alone is 16\)"):
        fm.read_idx(path)


def test_wrong_magic(fake_fmnist):
    path = fake_fmnist.wrong_magic("test_images")
    with pytest.raises(DataError, match=rf"^data file {path} has wrong magic number 0x903 "):
        load_dataset("fashion-mnist", fake_fmnist.root)


def test_label_magic_on_an_image_file(fake_fmnist):
    """2049 (1-d labels) where 2051 (3-d images) belongs: named as a magic mismatch, not as truncation."""
    path = write_idx(fake_fmnist.path("train_images"), fake_fmnist.arrays["train_images"].reshape(-1), magic=2049)
    with pytest.raises(DataError, match=rf"^data file {path} has magic number 2049 \(1-d\), expected 2051 \(3-d\)"):
        load_dataset("fashion-mnist", fake_fmnist.root)


def test_missing_file_names_it_and_the_fix(fake_fmnist):
    fake_fmnist.path("test_labels").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", fake_fmnist.root)
    msg = str(e.value)
    assert msg.startswith(f"missing data file {fake_fmnist.root / FMNIST_NAMES['test_labels']} ")
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg and "--download" in msg


def test_explicit_root_is_not_replaced_by_the_system_copy(tmp_path, fmnist_counts, monkeypatch):
    """Even with a complete system copy available, an explicit root lacking the files is an error."""
    system = write_fake_fmnist(tmp_path / "usr-share" / "fashion-mnist")
    monkeypatch.setattr(fm, "DEBIAN_DATASETS", system.root.parent)
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)
    assert load_dataset("fashion-mnist").info["source"] == str(system.root)  # no root: the system copy
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"^missing data file {empty / FMNIST_NAMES['train_images']} "):
        load_dataset("fashion-mnist", empty)


def test_env_data_root_is_honoured(fake_fmnist, monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_DATASETS", tmp_path / "nowhere")
    monkeypatch.setenv("NLBENCH_DATA_ROOT", str(fake_fmnist.root))
    assert load_dataset("fashion-mnist").info["source"] == str(fake_fmnist.root)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("NLBENCH_DATA_ROOT", str(empty))
    with pytest.raises(DataError, match="missing data file"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize("via_env", [False, True])
def test_nonexistent_root(tmp_path, monkeypatch, via_env):
    missing = tmp_path / "does-not-exist"
    if via_env:
        monkeypatch.setenv("NLBENCH_DATA_ROOT", str(missing))
    with pytest.raises(DataError, match=rf"^data root '{missing}' does not exist or is not a directory$"):
        load_dataset("fashion-mnist", None if via_env else missing)


def test_download_calls_torchvision_with_the_root(tmp_path, fmnist_counts, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    calls = []

    class FakeFashionMNIST:  # what torchvision leaves behind: the .gz files in root/FashionMNIST/raw
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            write_fake_fmnist(tmp_path / "dl" / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    (tmp_path / "dl").mkdir()
    ds = load_dataset("fashion-mnist", tmp_path / "dl", download=True)
    assert calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]
    assert len(ds.y_train) == N_TRAIN and ds.info["source"] == str(tmp_path / "dl" / "FashionMNIST" / "raw")
    # The next run finds the downloaded files without downloading again.
    calls.clear()
    assert len(load_dataset("fashion-mnist", tmp_path / "dl").y_test) == N_TEST
    assert calls == []


def test_download_without_root_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr(fm, "DEBIAN_DATASETS", tmp_path / "nowhere")
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match=r"^--download needs a --data-root"):
        load_dataset("fashion-mnist", download=True)
