"""Adding a noise kind is one file: this test module registers one (as a file in nlbench/noise/ would) and the
whole suite takes it, from spec parsing and listing to a run's record, with nothing else edited."""

from __future__ import annotations

import numpy as np
import pytest

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.noise import NOISES, flip_with_matrix, list_noises, parse_noise
from nlbench.noise.base import register_noise


@pytest.fixture
def next_class_noise():
    """``nextNN``: each flipped label goes to the next class (a pair flip under another name)."""

    @register_noise("next")
    def next_class(labels, num_classes, rate, rng, ctx):
        """Flip rate r of every class to the next class."""
        T = (1 - rate) * np.eye(num_classes) + rate * np.roll(np.eye(num_classes), 1, axis=1)
        return flip_with_matrix(labels, T, rng), T

    yield
    NOISES._items.pop("next")


def test_a_kind_registered_from_one_module_works_everywhere(next_class_noise, tmp_path):
    assert "nextNN" in list_noises() and parse_noise("next030").name == "next30"
    rec = train(RunConfig(method="erm", noise="next30", dataset="synthetic", epochs=1, meta_size=40, batch_size=64,
                          dataset_options={"n_train": 400, "n_test": 100}), device="cpu", results_dir=tmp_path)
    report = rec["noise_report"]
    assert rec["status"] == "ok" and report["spec"] == "next30"
    assert report["per_class_rate"] == pytest.approx([0.3] * 4, abs=0.01)  # exact counts per class
    T = np.array(report["transition_matrix"])
    assert np.allclose(np.diag(np.roll(T, -1, axis=1)) + np.diag(T), 1.0)  # only to the next class
