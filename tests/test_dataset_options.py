"""``--data-opt`` values are checked against the loader's annotations before the loader runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nlbench.datasets import _matches, load_dataset
from nlbench.errors import NLBenchError


@pytest.mark.parametrize("value, hint, ok", [
    (5, int, True), (True, int, False), ("5", int, False), (5, float, True), (0.5, float, True),
    (None, int | None, True), ([1, 2], tuple[int, int] | None, True), ([1, 2, 3], tuple[int, int], False),
    (5, tuple[int, int] | None, False), (["a", 1], tuple[int, int], False), ([0, 6], str | list | tuple, True),
    ("0,6", str | list | tuple, True), ([1, 2, 3], tuple[int, ...], True), ("x", bool, False),
    (np.int64(3), int, True), (np.float32(0.5), float, True), (Path("a"), Path, True), (3, Path, False),
])
def test_matches(value, hint, ok):
    assert _matches(value, hint) is ok


def test_load_dataset_rejects_a_wrong_type_before_loading():
    with pytest.raises(NLBenchError, match=r"n_train='many' for 'synthetic' must be of type int"):
        load_dataset("synthetic", n_train="many")
    ds = load_dataset("synthetic", n_train=40, n_test=20)
    assert len(ds.y_train) == 40
