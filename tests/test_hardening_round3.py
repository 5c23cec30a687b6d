"""Hardening, round three (issue 24): portable numerics, one validation of a run's config, untrusted
checkpoints and caches, bounded non-blocking reads, claims, plugins, and escaped exports."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from nlbench.api import csv_safe_cell, records_csv
from nlbench.benchmark import checkpoint as ckpt
from nlbench.benchmark import verify as V
from nlbench.benchmark.config import RunConfig, load_config_file
from nlbench.benchmark.grid.claims import claim_is_stale
from nlbench.benchmark.leaderboard import md_escape
from nlbench.benchmark.records import is_orphaned_temp, pid_alive
from nlbench.errors import DataError, NLBenchError
from nlbench.safe_io import gunzip_bounded, read_bounded

TINY = dict(method="erm", noise="sym40", dataset="synthetic", epochs=2, meta_size=40, batch_size=64,
            dataset_options={"n_train": 400, "n_test": 100})

CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
rec = train(RunConfig(**json.loads(sys.argv[1])), device="cpu", checkpoint_every=None)
print(json.dumps({"env": rec["env"], "history": [{k: v for k, v in h.items() if k != "epoch_time_s"}
                                                  for h in rec["history"]]}))
"""


def _child(portable: bool, code: str = CHILD) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NLBENCH_PORTABLE", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    if portable:
        env["NLBENCH_PORTABLE"] = "1"
    return subprocess.run([sys.executable, "-c", code, json.dumps(TINY)], capture_output=True, text=True, env=env)


def _has_avx2() -> bool:
    """What portable mode needs (AVX2 and FMA), read as :mod:`nlbench.portable` reads it."""
    from nlbench.portable import _cpu_has_avx2

    return _cpu_has_avx2() is True


@pytest.mark.skipif(not _has_avx2(), reason="portable mode needs an x86-64 CPU with AVX2")
def test_portable_mode_pins_kernels_reproduces_and_is_recorded():
    runs = [_child(True), _child(True), _child(False)]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-500:] for r in runs]
    a, b, native = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert a["env"]["portable"] is True and a["env"]["cpu_capability"] == "AVX2"
    pins = a["env"]["numerics_pins"]
    assert pins["MKL_CBWR"] == "COMPATIBLE" and pins["onednn_enabled"] is False
    assert a["history"] == b["history"]  # bit for bit
    assert native["env"]["portable"] is False and native["env"]["numerics_pins"]["ATEN_CPU_CAPABILITY"] is None
    # once torch has run a kernel the pins cannot take effect: the run is refused, not recorded as portable
    late = _child(True, "import torch\ntorch.ones(3).exp()\nimport nlbench.portable as p\np.check()")
    assert late.returncode != 0 and "portable mode could not take effect" in late.stderr


def test_verify_tells_portable_from_native_and_bounds_reruns():
    rec = {"run_name": "r", "status": "ok", "final": {"last_acc": 0.5}, "config": {"epochs": 10_000},
           "env": {"portable": True, "threads": 10**9},
           "history": [{"epoch": 1, "test_acc": 0.5, "epoch_time_s": 1.0}]}
    native = {**rec, "env": {"portable": False, "threads": 1}}
    v = V.classify(rec, native, None)
    assert v.portable and "[portable numerics]" in v.line() and "portable True -> False" in v.line()
    assert "[native numerics" in V.classify(native, native, None).line()
    assert "skipped" in V.refusal(rec) and V.refusal({**rec, "config": {"epochs": 3}}) is None
    assert V.record_threads(rec) is None and V.record_threads(native) == 1
    assert "\x1b" not in V.classify({**native, "run_name": "x\x1b[2J"}, native, None).line()


@pytest.mark.parametrize("bad, words", [
    (dict(method=5), "--method must be a name"),
    (dict(dataset=["synthetic"]), "--dataset must be a name"),
    (dict(augment="no"), "--augment must be true or false"),
    (dict(method_options="q=0.1"), "method_options must be a table"),
    (dict(record_options={"feature_epoch": [1]}), "unknown record option 'feature_epoch'"),
    (dict(method_options={"q": {"a": {"b": {"c": {"d": {"e": 1}}}}}}), "nested deeper"),
    (dict(dataset_options={"n train": 3}), "is not an identifier"),
])
def test_runconfig_validates_every_field_whatever_the_door(bad, words):
    with pytest.raises(NLBenchError, match=words):
        RunConfig(**{**TINY, **bad})
    with pytest.raises(NLBenchError, match=words):  # records and grids come through from_dict
        RunConfig.from_dict({**RunConfig(**TINY).to_dict(), **bad})


def test_config_file_is_read_as_untrusted_input(tmp_path):
    cases = {"method = 5\n": "--method must be a name", 'augment = "no"\n': "--augment must be",
             'method_options = "q=0.1"\n': "method_options must be a table",
             "a = " + "[" * 3000 + "]" * 3000 + "\n": "nested too deeply|unknown key"}
    for text, words in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(NLBenchError, match=words):
            load_config_file(path)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(NLBenchError, match="FIFO, not a regular file"):
        load_config_file(fifo)  # would hang if it were opened for reading
    (tmp_path / "ok.toml").write_text('method = "gce"\nmilestones = [1]\nschedule = "step"\n')
    assert load_config_file(tmp_path / "ok.toml")["method"] == "gce"


def test_bounded_reads_refuse_bombs_devices_and_fifos(tmp_path):
    bomb = gzip.compress(b"\0" * (8 << 20))
    with pytest.raises(NLBenchError, match="inflates to more than"):
        gunzip_bounded(bomb, 1 << 20)
    assert gunzip_bounded(gzip.compress(b"abc"), 3) == b"abc"
    with pytest.raises(NLBenchError, match="character device"):
        read_bounded("/dev/zero", 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(NLBenchError, match="larger than 100 bytes"):
        read_bounded(big, 100)


def test_fashion_mnist_idx_bomb_is_refused(tmp_path):
    from nlbench.datasets.fashion_mnist import read_idx

    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\0" * (4 << 20)))
    with pytest.raises(DataError, match="inflates to more than"):
        read_idx(path, expected_count=10, ndim=1)


def test_clothing1m_lists_refuse_fifos_and_non_ascii_labels(tmp_path):
    from nlbench.datasets.clothing1m import _read_kv, _read_lines

    kv = tmp_path / "noisy_label_kv.txt"
    kv.write_text("images/a.jpg ²\n", encoding="utf-8")
    with pytest.raises(DataError, match="is not '<path> <label 0..13>'"):
        _read_kv(kv)
    os.mkfifo(tmp_path / "list.txt")
    with pytest.raises(DataError, match="FIFO"):
        _read_lines(tmp_path / "list.txt")


def _state(history, step=1, wall=1.0):
    return {"history": history, "step": step, "wall_s": wall}


def test_checkpoint_progress_is_checked_against_the_run():
    ok = [{"epoch": 1, "test_acc": 0.5, "val_acc": float("nan"), "train_loss": 0.1}]
    ckpt.check_progress(_state(ok), epochs=3)
    forged = [{"epoch": i, "test_acc": 1.0} for i in (1, 2, 3)]
    bad = [(_state(forged, step=3), "a checkpoint of a 3-epoch run has fewer"),
           (_state(ok, wall="1.0"), "wall_s"),
           (_state([{"epoch": 1, "test_acc": torch.tensor(0.5)}]), "not a number"),
           (_state([{"epoch": 2, "test_acc": 0.5}]), "numbered"),
           (_state([{"epoch": 1, "test_acc": 7.0}]), "outside"),
           (_state(ok, step=True), "step")]
    for state, words in bad:
        with pytest.raises(ValueError, match=words):
            ckpt.check_progress(state, epochs=3)


def test_checkpoint_cannot_set_class_attributes_or_swap_kinds():
    class M:
        oracle = False

        def __init__(self):
            self.net = torch.nn.Linear(2, 2)
            self.count = 0

    m = M()
    with pytest.raises(ValueError, match="class attribute"):
        ckpt.restore(m, {"oracle": ("tree", True)})
    with pytest.raises(ValueError, match="which is a Linear here"):
        ckpt.restore(m, {"net": ("tree", 3)})
    ckpt.restore(m, {"count": ("tree", 4)})
    assert m.count == 4 and M.oracle is False


def test_checkpoint_that_inflates_past_the_cap_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 1 << 20)
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/0", b"\0" * (4 << 20))
    assert path.stat().st_size < (1 << 20)
    assert ckpt.load(path, "abc", torch.device("cpu")) is None
    assert "inflating to" in capsys.readouterr().err


def test_checkpoint_path_that_is_a_directory_does_not_crash_after_the_record(tmp_path, capsys):
    d = tmp_path / "run.pt"
    d.mkdir()
    ckpt.remove(d)
    assert d.is_dir() and "directory where a checkpoint goes" in capsys.readouterr().err


def test_pids_that_do_not_fit_and_future_claims(tmp_path):
    assert pid_alive(10**30) is False and pid_alive(-5) is False
    info = {"pid": 10**30, "host": "h", "token": "t"}
    assert claim_is_stale(info, 0.0, now=0.0, ttl=60, host="h")
    live = {"pid": os.getpid(), "host": "other", "token": "t"}
    assert not claim_is_stale(live, 100.0, now=100.0, ttl=60, host="h")
    assert claim_is_stale(live, 100.0 + 10**6, now=100.0, ttl=60, host="h")  # dated in the future: clock skew
    temp = tmp_path / (".x.json.tmp-" + "9" * 200 + "@host-abc")
    temp.write_text("")
    assert is_orphaned_temp(temp) in (True, False)  # no OverflowError from a 200-digit pid


def test_markdown_and_csv_are_neutralised():
    assert md_escape("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert "\n" not in md_escape("2024\n# injected heading") and "`" not in md_escape("a`b")
    for cell in ("=HYPERLINK(\"http://x\")", "+1", "-2+3", "@SUM(A1)", "\t=1", " =1"):
        assert csv_safe_cell(cell).startswith("'")
    assert csv_safe_cell(-3) == -3 and csv_safe_cell("plain") == "plain"
    text = records_csv(pd.DataFrame({"created": ["=cmd|' /C calc'!A0"], "acc": [-1.5]}))
    assert "\n'=cmd" in text and ",-1.5" in text


def _install(root, package, source, entry):
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    (root / package / "mod.py").write_text(source)
    dist = root / f"{package}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[nlbench.methods]\n{entry}\n")


def test_plugins_that_exit_or_replace_methods_provide_nothing(tmp_path, monkeypatch, capsys):
    import nlbench.methods as methods

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(methods, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(methods, "PLUGIN_DISTS", {})
    monkeypatch.setattr(methods, "FAILED_PLUGINS", {})
    _install(tmp_path, "exitpkg", "from nlbench.methods import METHODS\nimport nlbench.methods.erm as e\n"
             "METHODS._items['exit-m'] = e.ERM\nraise SystemExit(0)\n", "exit-m = exitpkg.mod")
    _install(tmp_path, "swappkg", "import nlbench.methods.erm as e\n"
             "e.ERM.oracle = True\n", "swap-m = swappkg.mod")
    erm = methods.METHODS.get("erm")
    methods.load_plugins()
    err = capsys.readouterr().err
    assert "SystemExit(0)" in err and "replaced or changed the already registered method(s) erm" in err
    assert "exit-m" not in methods.METHODS and methods.METHODS.get("erm") is erm and erm.oracle is False
    assert set(methods.FAILED_PLUGINS) == {"exit-m", "swap-m"}


def test_jpeg_cache_is_untrusted(tmp_path):
    from nlbench.datasets import cifar_jpeg as J

    arrays = {"x_train": np.zeros((2, 3, 32, 32), np.uint8), "y_train": np.array([0, 1]),
              "x_test": np.zeros((1, 3, 32, 32), np.uint8), "y_test": np.array([2])}
    good = tmp_path / "good.npz"
    np.savez(good, **arrays, digest=np.array(J._cache_digest(arrays, "src")))
    assert J._read_jpeg_cache(good, "src") is not None
    assert J._read_jpeg_cache(good, "other-source") is None
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **{**arrays, "y_train": np.array([1, 1])}, digest=np.array(J._cache_digest(arrays, "src")))
    assert J._read_jpeg_cache(tampered, "src") is None
    bad_labels = {**arrays, "y_train": np.array([0, 11])}
    neg = tmp_path / "neg.npz"
    np.savez(neg, **bad_labels, digest=np.array(J._cache_digest(bad_labels, "src")))
    assert J._read_jpeg_cache(neg, "src") is None
    # a header claiming a 300 GiB array in a tiny member: refused before anything is allocated
    huge = tmp_path / "huge.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False,
                                               "shape": (300 * 2**30 // 3072, 3, 32, 32)})
    with zipfile.ZipFile(huge, "w") as zf:
        for k in ("x_train", "y_train", "x_test", "y_test", "digest"):
            zf.writestr(f"{k}.npy", buf.getvalue() + b"\0" * 16)
    assert J._read_jpeg_cache(huge, "src") is None


def test_augment_on_a_non_image_dataset_is_one_line():
    from nlbench.benchmark.harness import train

    with pytest.raises(NLBenchError, match="--augment needs an image dataset"):
        train(RunConfig(**TINY, augment=True), device="cpu", checkpoint_every=None)


@pytest.mark.parametrize("matrix", ["abc", [[1, "x"]], [[0.5, 0.5]] * 3, {"a": 1}, [[1e308, 2.0], [0.0, 1.0]]])
def test_a_malformed_noise_matrix_makes_a_bad_record_not_a_traceback(tmp_path, matrix):
    """Readers take the nominal matrix's diagonal: a record whose matrix is not a square matrix of probabilities
    fails the schema, so ``load_records`` (and every reader) skips it with a warning instead of crashing."""
    from pathlib import Path

    from nlbench.api import load_records
    from nlbench.benchmark.schema import record_problems

    runs = Path(__file__).resolve().parents[1] / "results" / "runs"
    rec = json.loads(sorted(runs.glob("*.json"))[0].read_text())
    assert record_problems(rec) == []
    rec["noise_report"]["nominal_transition_matrix"] = matrix
    assert any("nominal_transition_matrix" in p for p in record_problems(rec))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / f"{rec['run_name']}.json").write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="nominal_transition_matrix"):
        assert len(load_records(tmp_path)) == 0
