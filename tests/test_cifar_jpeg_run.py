"""One real epoch on the CIFAR-10 JPEG copy kept beside the project (slow: decodes 60,000 JPEGs once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
def test_one_epoch_on_cifar10_jpeg(tmp_path):
    if not (SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").exists():
        pytest.skip("the shared CIFAR-10 JPEG copy is not available")
    root = tmp_path / "data"  # a writable root linking to the read-only copies, so the decode cache can be written
    (root / "cifar10-jpeg").mkdir(parents=True)
    (root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").symlink_to(SHARED / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    (root / "cifar-n").symlink_to(SHARED / "cifar-n")
    cfg = RunConfig(method="surrogate", noise="cifar10n-worst", dataset="cifar10-jpeg", model="lenet", epochs=1,
                    batch_size=128, lr=0.05, meta_size=1000, augment=True)
    rec = train(cfg, data_root=root, device="cpu", results_dir=tmp_path / "results")
    assert rec["status"] == "ok"
    assert rec["sizes"] == {"pool": 49000, "meta": 1000, "val": 0, "test": 10000, "train": 49000}
    assert 0.38 < rec["noise_report"]["realised_rate"] < 0.42  # CIFAR-10N worst: 40.2% on the full set
    assert "JPEG" in rec["dataset_info"]["caveat"]
    assert rec["final"]["last_acc"] > 0.2  # one epoch of LeNet on human-noisy labels learns something
