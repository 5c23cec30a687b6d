"""CIFAR-10/100, cifar10-jpeg, CIFAR-N and Clothing1M loaders on small fake files in the real on-disk formats."""

from __future__ import annotations

import datetime
import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nlbench.datasets import load_dataset
from nlbench.datasets.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE, cifar100_asym_map
from nlbench.datasets.cifar_jpeg import cifar10_jpeg, recover_cifar10_order
from nlbench.datasets.cifarn import CIFAR10N_NOISES, load_cifar_n
from nlbench.datasets.clothing1m import CLOTHING1M_CLASSES, read_clothing1m_lists
from nlbench.errors import DataError, NLBenchError

SHARED = Path("/work/shared/data")
PER_BATCH = 3  # fake CIFAR-10: 5 x 3 training images + 3 test images


class Evil:
    """A class a CIFAR-N file must never be allowed to instantiate."""

    def __init__(self, x=1):
        self.x = x


# ---------------------------------------------------------------------------------------------------------------
# fake data writers (torchvision test/datasets_utils.py style)
# ---------------------------------------------------------------------------------------------------------------


def _flat_images(values: np.ndarray) -> np.ndarray:
    """CIFAR rows (N, 3072) whose every pixel of image i equals values[i] (mod 256)."""
    return np.repeat((values % 256).astype(np.uint8)[:, None], 3072, axis=1)


def write_cifar10(root: Path, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y_train = rng.integers(0, 10, 5 * PER_BATCH)
    y_test = rng.integers(0, 10, PER_BATCH)
    for b in range(5):
        sl = slice(b * PER_BATCH, (b + 1) * PER_BATCH)
        batch = {b"batch_label": f"training batch {b + 1} of 5".encode(), b"labels": y_train[sl].tolist(),
                 b"data": _flat_images(np.arange(sl.start, sl.stop)), b"filenames": [b"x.png"] * PER_BATCH}
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"labels": y_test.tolist(), b"data": _flat_images(100 + np.arange(PER_BATCH))}, f,
                    protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, f,
                    protocol=protocol)
    return y_train, y_test


def write_cifar100(root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    y_train, y_test = np.arange(0, 100, 7), np.array([5, 50, 99])
    coarse = np.array(CIFAR100_COARSE)
    for name, y, base in (("train", y_train, 0), ("test", y_test, 200)):
        d = {b"fine_labels": y.tolist(), b"coarse_labels": coarse[y].tolist(),
             b"data": _flat_images(base + np.arange(len(y)))}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                     b"coarse_label_names": [b"c"] * 20}, f)
    return y_train, y_test


def write_cifar10n(path: Path, clean: np.ndarray, **extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    d = {"clean_label": clean.astype(np.int64), "aggre_label": clean.astype(np.int64),
         "worse_label": rng.integers(0, 10, len(clean)), "random_label1": rng.integers(0, 10, len(clean)),
         "random_label2": rng.integers(0, 10, len(clean)), "random_label3": rng.integers(0, 10, len(clean))}
    d.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(d, path)
    return d


def _jpeg_bytes(rgb: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


JPEG_TRAIN, JPEG_TEST = 3, 2  # per class


def jpeg_files(clean: np.ndarray) -> dict[str, bytes]:
    """The fake JPEG copy: file k of class c is that class's k-th image in the original order given by clean;
    its red value encodes the original index (8 * i), green the class; test images encode 200 + 8 * k."""
    files = {}
    for c, cls in enumerate(CIFAR10_CLASSES):
        for k, i in enumerate(np.flatnonzero(clean == c)):
            files[f"train/{cls}/{k:04d}.jpg"] = _jpeg_bytes((8 * int(i), 20 * c, 128))
        for k in range(JPEG_TEST):
            files[f"test/{cls}/{k:04d}.jpg"] = _jpeg_bytes((200 + 8 * k, 20 * c, 64))
    return files


def fake_clean_label() -> np.ndarray:
    return np.random.default_rng(3).permutation(np.repeat(np.arange(10), JPEG_TRAIN))


def write_jpeg_tar(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "cifar10-jpeg"
    folder.mkdir(parents=True, exist_ok=True)
    tar = folder / "cifar10-jpeg.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for name in sorted(files, reverse=True):  # archive order must not matter
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tf.addfile(info, io.BytesIO(files[name]))
    return tar


def write_jpeg_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        p = root / "cifar10-jpeg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 pickles
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar10_pickles(tmp_path, protocol):
    y_train, y_test = write_cifar10(tmp_path, protocol)
    ds = load_dataset("cifar10", tmp_path, expected_sizes=(5 * PER_BATCH, PER_BATCH))
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 32, 32) and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert ds.x_train[:, :, 0, 0].tolist() == [[i] * 3 for i in range(15)]  # batch order kept
    assert ds.x_test[:, 0, 5, 7].tolist() == [100, 101, 102]
    assert ds.classes == CIFAR10_CLASSES and ds.num_classes == 10
    assert ds.asym_map == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    assert ds.mean is not None and len(ds.mean) == 3


def test_cifar10_sizes_checked(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DataError, match="cifar-10-batches-py hold 15 \\+ 3 images, expected 50000 \\+ 10000"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_human_labels_lazy_and_aligned(tmp_path):
    y_train, _ = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", tmp_path, expected_sizes=None)
    assert set(ds.human_labels) == set(CIFAR10N_NOISES)
    with pytest.raises(DataError, match="missing CIFAR-N file .*CIFAR-10_human.pt"):
        ds.human_labels["cifar10n-aggre"]()
    saved = write_cifar10n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", y_train)
    ds = load_dataset("cifar10", tmp_path, expected_sizes=None)
    assert ds.human_labels["cifar10n-worst"]().tolist() == saved["worse_label"].tolist()
    assert ds.human_labels["cifar10n-rand2"]().tolist() == saved["random_label2"].tolist()

    write_cifar10n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", (y_train + 1) % 10)
    ds = load_dataset("cifar10", tmp_path, expected_sizes=None)
    with pytest.raises(DataError, match="clean_label does not match"):
        ds.human_labels["cifar10n-aggre"]()


def test_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset("cifar10", None)
    with pytest.raises(DataError, match=r"missing folder .*cifar-10-batches-py: pass --download or place "
                                        "torchvision's cifar-10-batches-py there"):
        load_dataset("cifar10", tmp_path)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data file .*data_batch_4"):
        load_dataset("cifar10", tmp_path, expected_sizes=None)


def test_cifar_pickle_corrupted_or_unsafe(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match="corrupted CIFAR pickle .*data_batch_2"):
        load_dataset("cifar10", tmp_path, expected_sizes=None)
    with open(batch, "wb") as f:
        pickle.dump({b"labels": [0], b"data": _flat_images(np.zeros(1)), b"when": datetime.date(2020, 1, 1)}, f)
    with pytest.raises(DataError, match="refused or corrupted CIFAR pickle .*data_batch_2.*datetime.date"):
        load_dataset("cifar10", tmp_path, expected_sizes=None)
    with open(batch, "wb") as f:
        pickle.dump({b"labels": [0, 1], b"data": _flat_images(np.zeros(1))}, f)
    with pytest.raises(DataError, match="data_batch_2: 1 images but 2 labels"):
        load_dataset("cifar10", tmp_path, expected_sizes=None)


def test_cifar100_pickles(tmp_path):
    y_train, y_test = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", tmp_path, expected_sizes=(len(y_train), len(y_test)))
    assert ds.x_train.shape == (len(y_train), 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert ds.x_train[:, 2, 31, 31].tolist() == list(range(len(y_train)))
    assert ds.classes == CIFAR100_CLASSES and ds.num_classes == 100
    assert ds.asym_map == cifar100_asym_map()
    assert set(ds.human_labels) == {"cifar100n"}
    noisy = (y_train + 3) % 100
    (tmp_path / "cifar-n").mkdir()
    torch.save({"clean_label": y_train, "noisy_label": noisy, "clean_coarse_label": list(range(len(y_train))),
                "noisy_coarse_label": [0] * len(y_train)}, tmp_path / "cifar-n" / "CIFAR-100_human.pt")
    assert ds.human_labels["cifar100n"]().tolist() == noisy.tolist()
    with pytest.raises(DataError, match="missing folder .*cifar-100-python: pass --download"):
        load_dataset("cifar100", tmp_path / "cifar-n")


def test_cifar100_coarse_map_and_asym():
    coarse = np.array(CIFAR100_COARSE)
    assert len(coarse) == 100 and len(CIFAR100_CLASSES) == 100
    assert np.bincount(coarse).tolist() == [5] * 20  # every superclass has exactly 5 fine classes
    amap = cifar100_asym_map()
    assert sorted(amap) == list(range(100)) and sorted(amap.values()) == list(range(100))
    for f, g in amap.items():
        assert g != f and coarse[g] == coarse[f]
        fine = np.flatnonzero(coarse == coarse[f]).tolist()
        assert g == fine[(fine.index(f) + 1) % 5]
    assert amap[4] == 30 and amap[95] == 4  # aquatic mammals: beaver, dolphin, otter, seal, whale
    assert CIFAR100_CLASSES[4] == "beaver" and CIFAR100_CLASSES[95] == "whale"


@pytest.mark.skipif(not (SHARED / "cifar-n" / "CIFAR-100_human.pt").exists(), reason="real CIFAR-100N absent")
def test_cifar100_coarse_map_matches_real_cifar100n():
    d = load_cifar_n(SHARED / "cifar-n" / "CIFAR-100_human.pt")
    assert set(d) == {"clean_label", "noisy_label", "clean_coarse_label", "noisy_coarse_label"}
    assert np.array_equal(np.array(CIFAR100_COARSE)[d["clean_label"]], d["clean_coarse_label"])


# ---------------------------------------------------------------------------------------------------------------
# CIFAR-N safe loader
# ---------------------------------------------------------------------------------------------------------------


def test_load_cifar_n_roundtrip(tmp_path):
    clean = np.arange(20) % 10
    saved = write_cifar10n(tmp_path / "CIFAR-10_human.pt", clean)
    d = load_cifar_n(tmp_path / "CIFAR-10_human.pt", expected_len=20)
    assert set(d) == set(saved)
    assert all(v.dtype == np.int64 and v.tolist() == saved[k].tolist() for k, v in d.items())
    with pytest.raises(DataError, match="holds 20 labels, expected 50000"):
        load_cifar_n(tmp_path / "CIFAR-10_human.pt")
    with pytest.raises(DataError, match="missing CIFAR-N file"):
        load_cifar_n(tmp_path / "CIFAR-100_human.pt")


@pytest.mark.parametrize("bad", [datetime.date(2021, 5, 1), Evil(3)], ids=["datetime", "custom-class"])
def test_load_cifar_n_refuses_other_globals(tmp_path, bad):
    path = tmp_path / "CIFAR-10_human.pt"
    write_cifar10n(path, np.arange(10), extra=bad)
    with pytest.raises(DataError) as err:
        load_cifar_n(path, expected_len=10)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "refused by the safe loader" in msg


def test_load_cifar_n_wrong_keys_and_corruption(tmp_path):
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"clean_label": np.arange(10), "aggre_label": np.arange(10)}, path)
    with pytest.raises(DataError, match=r"CIFAR-N file .*CIFAR-10_human.pt lacks keys worse_label, random_label1, "
                                        r"random_label2, random_label3; expected clean_label, aggre_label"):
        load_cifar_n(path, expected_len=10)
    path100 = tmp_path / "CIFAR-100_human.pt"
    torch.save({"clean_label": np.arange(10), "noisy_labels": np.arange(10)}, path100)
    with pytest.raises(DataError, match="lacks keys noisy_label; expected clean_label, noisy_label"):
        load_cifar_n(path100, expected_len=10)
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError, match="CIFAR-10_human.pt"):
        load_cifar_n(path, expected_len=10)


@pytest.mark.skipif(not (SHARED / "cifar-n" / "CIFAR-10_human.pt").exists(), reason="real CIFAR-10N absent")
def test_load_cifar_n_real_cifar10():
    d = load_cifar_n(SHARED / "cifar-n" / "CIFAR-10_human.pt")
    assert sorted(d) == sorted(["clean_label", "aggre_label", "worse_label", "random_label1", "random_label2",
                                "random_label3"])
    assert all(len(v) == 50000 for v in d.values())
    assert np.bincount(d["clean_label"]).tolist() == [5000] * 10
    assert 0.39 < (d["worse_label"] != d["clean_label"]).mean() < 0.41  # CIFAR-10N worst: 40.21%


# ---------------------------------------------------------------------------------------------------------------
# cifar10-jpeg
# ---------------------------------------------------------------------------------------------------------------


def test_recover_cifar10_order():
    clean = np.array([2, 0, 2, 1, 0])
    class_sorted = np.array(["0a", "0b", "1a", "2a", "2b"])  # class c's k-th image in original order
    assert class_sorted[recover_cifar10_order(clean)].tolist() == ["2a", "0a", "2b", "1a", "0b"]


def _check_jpeg(ds, clean):
    n = 10 * JPEG_TRAIN
    assert ds.name == "cifar10-jpeg" and ds.classes == CIFAR10_CLASSES
    assert ds.x_train.shape == (n, 3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (10 * JPEG_TEST, 3, 32, 32) and ds.y_test.dtype == torch.int64
    assert ds.y_train.tolist() == clean.tolist()
    red = ds.x_train[:, 0].float().mean(dim=(1, 2))
    assert torch.round(red / 8).long().tolist() == list(range(n))  # image i is the original i-th image
    green = ds.x_train[:, 1].float().mean(dim=(1, 2))
    assert torch.round(green / 20).long().tolist() == clean.tolist()
    assert ds.y_test.tolist() == np.repeat(np.arange(10), JPEG_TEST).tolist()  # class by class
    red_test = ds.x_test[:, 0].float().mean(dim=(1, 2))
    assert torch.round((red_test - 200) / 8).long().tolist() == [0, 1] * 10
    assert "JPEG" in ds.info["caveat"] and "cifar10-jpeg" in ds.info["caveat"]


def test_cifar10_jpeg_tar_order_and_cache(tmp_path):
    clean = fake_clean_label()
    tar = write_jpeg_tar(tmp_path, jpeg_files(clean))
    saved = write_cifar10n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", clean)
    ds = load_dataset("cifar10-jpeg", tmp_path)
    _check_jpeg(ds, clean)
    assert ds.info["cache"].startswith("wrote") and "recovered" in ds.info["order"]
    assert ds.human_labels["cifar10n-worst"]().tolist() == saved["worse_label"].tolist()
    cache = tmp_path / "cifar10-jpeg" / "cache-v1.npz"
    assert cache.is_file() and sorted(p.name for p in cache.parent.iterdir()) == ["cache-v1.npz",
                                                                                  "cifar10-jpeg.tar.gz"]
    tar.unlink()  # a second load must not need the archive
    again = cifar10_jpeg(tmp_path)
    assert again.info["cache"].startswith("read")
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.x_test, ds.x_test)
    assert torch.equal(again.y_train, ds.y_train)


def test_cifar10_jpeg_tree_without_cifar_n(tmp_path):
    clean = fake_clean_label()
    write_jpeg_tree(tmp_path, jpeg_files(clean))
    ds = load_dataset("cifar10-jpeg", tmp_path)
    assert "class-sorted" in ds.info["order"]
    assert ds.y_train.tolist() == np.repeat(np.arange(10), JPEG_TRAIN).tolist()
    order = np.argsort(clean, kind="stable")  # class-sorted position -> original index
    red = ds.x_train[:, 0].float().mean(dim=(1, 2))
    assert torch.round(red / 8).long().tolist() == order.tolist()
    with pytest.raises(DataError, match="class-sorted"):
        ds.human_labels["cifar10n-aggre"]()
    # the cache keeps class-sorted arrays, so CIFAR-N added later still recovers the order
    write_cifar10n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", clean)
    _check_jpeg(load_dataset("cifar10-jpeg", tmp_path), clean)


def test_cifar10_jpeg_errors(tmp_path):
    with pytest.raises(DataError, match="missing folder .*cifar10-jpeg"):
        load_dataset("cifar10-jpeg", tmp_path)
    (tmp_path / "cifar10-jpeg").mkdir()
    with pytest.raises(DataError, match="missing .*cifar10-jpeg.tar.gz"):
        load_dataset("cifar10-jpeg", tmp_path)
    with pytest.raises(DataError, match="pass --data-root"):
        load_dataset("cifar10-jpeg", None)
    files = jpeg_files(fake_clean_label())
    del files["train/dog/0001.jpg"]
    write_jpeg_tar(tmp_path, files)
    with pytest.raises(DataError, match="train/dog lacks image number 1"):
        load_dataset("cifar10-jpeg", tmp_path)
    assert not (tmp_path / "cifar10-jpeg" / "cache-v1.npz").exists()
    # CIFAR-N whose class counts disagree with the tree
    clean = fake_clean_label()
    write_jpeg_tar(tmp_path, jpeg_files(clean))
    write_cifar10n(tmp_path / "cifar-n" / "CIFAR-10_human.pt", np.sort(clean)[::-1] % 9)
    with pytest.raises(DataError, match="do not align"):
        load_dataset("cifar10-jpeg", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").exists(), reason="real data absent")
def test_cifar10_jpeg_real(tmp_path):
    (tmp_path / "cifar10-jpeg").mkdir()
    (tmp_path / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").symlink_to(SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    (tmp_path / "cifar-n").symlink_to(SHARED / "cifar-n")
    t0 = time.perf_counter()
    ds = load_dataset("cifar10-jpeg", tmp_path)
    t_decode = time.perf_counter() - t0
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(ds.y_train).tolist() == [5000] * 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10
    human = load_cifar_n(tmp_path / "cifar-n" / "CIFAR-10_human.pt")
    assert np.array_equal(human["clean_label"], ds.y_train.numpy())
    aggre = ds.human_labels["cifar10n-aggre"]()
    assert 0.08 < (aggre != ds.y_train.numpy()).mean() < 0.10  # CIFAR-10N aggregate: 9.03%
    t0 = time.perf_counter()
    again = load_dataset("cifar10-jpeg", tmp_path)
    t_cache = time.perf_counter() - t0
    assert torch.equal(again.x_train, ds.x_train) and again.info["cache"].startswith("read")
    print(f"\ncifar10-jpeg real: decode+cache {t_decode:.1f} s, cached load {t_cache:.2f} s")


# ---------------------------------------------------------------------------------------------------------------
# Clothing1M
# ---------------------------------------------------------------------------------------------------------------


def write_clothing1m(root: Path) -> dict[str, list[tuple[str, int]]]:
    folder = root / "clothing1m"
    rng = np.random.default_rng(5)
    all_paths = [f"images/{i % 3}/{i:02d}/{1000 + i}.jpg" for i in range(12)]
    for i, p in enumerate(all_paths):
        (folder / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12 + i, 10), (10 * i, 100, 50)).save(folder / p, format="JPEG", quality=95)
    noisy = {p: int(rng.integers(0, 14)) for p in all_paths[:8]}
    clean = {p: int(rng.integers(0, 14)) for p in all_paths[4:]}
    (folder / "noisy_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in noisy.items()))
    (folder / "clean_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in clean.items()))
    splits = {"noisy_train": all_paths[:8], "clean_train": all_paths[4:7], "clean_val": all_paths[7:9],
              "clean_test": all_paths[9:12]}
    for split, paths in splits.items():
        (folder / f"{split}_key_list.txt").write_text("\n".join(paths) + "\n")
    return {s: [(p, (noisy if s == "noisy_train" else clean)[p]) for p in ps] for s, ps in splits.items()}


def test_clothing1m_lists(tmp_path):
    expected = write_clothing1m(tmp_path)
    lists = read_clothing1m_lists(tmp_path)
    assert set(lists) == {"noisy_train", "clean_train", "clean_val", "clean_test"}
    for split, pairs in expected.items():
        assert lists[split].paths == [p for p, _ in pairs]
        assert lists[split].labels.tolist() == [y for _, y in pairs]
    assert len(CLOTHING1M_CLASSES) == 14


def test_clothing1m_loader(tmp_path):
    expected = write_clothing1m(tmp_path)
    ds = load_dataset("clothing1m", tmp_path, image_size=8)
    assert ds.x_train.shape == (8, 3, 8, 8) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (3, 3, 8, 8) and ds.num_classes == 14
    assert ds.y_train.tolist() == [y for _, y in expected["noisy_train"]]
    assert ds.y_test.tolist() == [y for _, y in expected["clean_test"]]
    assert abs(int(ds.x_train[3, 0].float().mean()) - 30) <= 3  # image 3 is flat red 30
    assert ds.info["clean_train_count"] == str(len(expected["clean_train"]))
    capped = load_dataset("clothing1m", tmp_path, image_size=8, max_per_split=2)
    assert len(capped.x_train) == 2 and len(capped.x_test) == 2
    assert torch.equal(capped.x_train, ds.x_train[:2])
    with pytest.raises(DataError, match="GiB in memory"):
        load_dataset("clothing1m", tmp_path, image_size=224, max_bytes=10**6)


def test_clothing1m_errors(tmp_path):
    with pytest.raises(DataError, match="missing folder .*clothing1m"):
        load_dataset("clothing1m", tmp_path, image_size=8)
    write_clothing1m(tmp_path)
    (tmp_path / "clothing1m" / "clean_val_key_list.txt").unlink()
    with pytest.raises(DataError, match="missing Clothing1M list file .*clean_val_key_list.txt"):
        read_clothing1m_lists(tmp_path)
    (tmp_path / "clothing1m" / "clean_val_key_list.txt").write_text("images/9/99/404.jpg\n")
    with pytest.raises(DataError, match="images/9/99/404.jpg listed in .*clean_val_key_list.txt has no label"):
        read_clothing1m_lists(tmp_path)
    (tmp_path / "clothing1m" / "clean_val_key_list.txt").write_text("")
    (tmp_path / "clothing1m" / "images" / "0" / "00" / "1000.jpg").unlink()
    with pytest.raises(DataError, match="missing Clothing1M image .*1000.jpg"):
        load_dataset("clothing1m", tmp_path, image_size=8)


def test_clothing1m_meta_set_comes_from_the_clean_training_list(tmp_path):
    """The meta set of a Clothing1M run is drawn from the human-verified clean list with its clean labels, never
    carved from the noisy training labels (which then give only the validation split and the pool)."""
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import noisy_pool, to_device

    folder = tmp_path / "clothing1m"
    noisy_paths = [f"images/0/00/{i}.jpg" for i in range(20)]
    clean_paths = [f"images/1/00/{i}.jpg" for i in range(28)]  # two of each of the 14 classes
    for i, p in enumerate(noisy_paths + clean_paths):
        (folder / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 10), (i * 5 % 256, 0, 0)).save(folder / p, format="JPEG", quality=95)
    noisy = {p: i % 14 for i, p in enumerate(noisy_paths)}
    clean = {p: i // 2 for i, p in enumerate(clean_paths)}
    (folder / "noisy_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in noisy.items()))
    (folder / "clean_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in clean.items()))
    for name, paths in {"noisy_train": noisy_paths, "clean_train": clean_paths, "clean_val": clean_paths[:2],
                        "clean_test": clean_paths[:4]}.items():
        (folder / f"{name}_key_list.txt").write_text("\n".join(paths) + "\n")
    ds = load_dataset("clothing1m", tmp_path, image_size=8)
    assert ds.x_meta.shape == (28, 3, 8, 8) and ds.y_meta.tolist() == [i // 2 for i in range(28)]
    cfg = RunConfig(dataset="clothing1m", model="mlp", noise="clean", meta_size=14, val_size=4)
    pool = noisy_pool(cfg, ds)
    data = to_device(pool, ds, torch.device("cpu"))
    assert len(pool.splits.meta) == 0 and pool.meta_size == 14
    assert len(pool.splits.pool) + len(pool.splits.val) == 20  # the whole noisy list: nothing carved for meta
    assert sorted(data.meta_y.tolist()) == list(range(14))  # class-balanced, clean labels
    for x, y in zip(data.meta_x, data.meta_y, strict=True):  # each meta image is a clean-list image of that label
        assert any(torch.equal(x, ds.x_meta[j]) for j in (2 * int(y), 2 * int(y) + 1))
    with pytest.raises(NLBenchError, match="trusted samples for the meta set"):
        noisy_pool(RunConfig(dataset="clothing1m", model="mlp", noise="clean", meta_size=14 * 3), ds)
    # its training labels are the real noisy ones: no synthetic noise on top, no oracle, no weight telemetry
    assert ds.true_labels is False
    with pytest.raises(NLBenchError, match="real noisy labels and no true ones"):
        noisy_pool(RunConfig(dataset="clothing1m", model="mlp", noise="sym20", meta_size=14), ds)
    from nlbench.benchmark.harness import train

    with pytest.raises(NLBenchError, match="reads the true labels"):
        train(RunConfig(dataset="clothing1m", model="mlp", method="oracle", meta_size=14, epochs=1), dataset=ds,
              device="cpu")
    rec = train(RunConfig(dataset="clothing1m", model="mlp", method="surrogate", meta_size=14, epochs=1,
                          batch_size=8), dataset=ds, device="cpu")
    assert rec["status"] == "ok" and "w_auroc" not in rec["history"][0] and rec["sizes"]["meta"] == 14
