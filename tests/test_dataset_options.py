"""``--data-opt`` values are checked against the loader's annotations before the loader runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nlbench.datasets import load_dataset
from nlbench.errors import NLBenchError
from nlbench.options import check_value


@pytest.mark.parametrize("value, hint, ok", [
    (5, int, True), (True, int, False), ("5", int, True), ("5x", int, False), (5, float, True), (0.5, float, True),
    (None, int | None, True), ([1, 2], tuple[int, int] | None, True), ([1, 2, 3], tuple[int, int], False),
    (5, tuple[int, int] | None, False), (["a", 1], tuple[int, int], False), ([0, 6], str | list | tuple, True),
    ("0,6", str | list | tuple, True), ([1, 2, 3], tuple[int, ...], True), ("x", bool, False),
    (np.int64(3), int, True), (np.float32(0.5), float, True), (Path("a"), Path, True), (3, Path, False),
])
def test_option_types(value, hint, ok):
    # load_dataset checks --data-opt values with nlbench.options (strings from the CLI convert where they can)
    if ok:
        check_value("option", value, hint)
    else:
        with pytest.raises(NLBenchError, match="option must be"):
            check_value("option", value, hint)


def test_load_dataset_rejects_a_wrong_type_before_loading():
    with pytest.raises(NLBenchError, match=r"dataset 'synthetic': option n_train must be an integer, got 'many'"):
        load_dataset("synthetic", n_train="many")
    ds = load_dataset("synthetic", n_train=40, n_test=20)
    assert len(ds.y_train) == 40
