"""A results folder is untrusted input: every reader survives any file of any shape or type and reports it.

Each test plants one kind of hostile file next to valid records and checks what the readers say: ``results
check`` names the file and exits 1, the leaderboard, ``table`` and ``plot`` skip it with a warning and use only
the valid records, the grid's resume scan treats it as not done. Readers that could block (a FIFO) or run
forever (``/dev/zero``) run under an alarm, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.plots import out_path, plot_all, safe_file_name
from nlbench.benchmark.records import (
    MAX_RECORD_BYTES,
    find_record,
    runs_dir,
    scan_records,
    validate_record,
    write_record,
)
from nlbench.benchmark.schema import MAX_DEPTH
from nlbench.benchmark.sweep import render_sweep
from nlbench.cli import app
from nlbench.errors import NLBenchError

runner = CliRunner()


def record(method: str = "erm", noise: str = "sym20", seed: int = 0, acc: float = 0.5, meta_size: int = 40,
           **config) -> dict:
    """A schema-valid record of a made-up run (two epochs)."""
    cfg = RunConfig(method=method, noise=noise, dataset="synthetic", seed=seed, epochs=2, meta_size=meta_size,
                    **config)
    history = [{"epoch": e, "test_acc": acc, "epoch_time_s": 0.1, "val_acc": None} for e in (1, 2)]
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": method, "noise": noise,
            "dataset": "synthetic", "model": cfg.model, "seed": seed, "status": "ok", "oracle": False,
            "config": cfg.to_dict(), "env": {}, "noise_report": {"realised_rate": 0.2}, "history": history,
            "final": {"last_acc": acc, "best_acc": acc, "last5_acc": acc}, "wall_time_s": 0.2}


@pytest.fixture
def results(tmp_path) -> Path:
    """A results folder holding three valid erm records (seeds 0-2, accuracy 0.5)."""
    folder = tmp_path / "results"
    for seed in range(3):
        write_record(folder, record(seed=seed))
    return folder


def plant(results: Path, name: str, text: str | bytes) -> Path:
    path = runs_dir(results) / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def tampered(mutate, **kw) -> str:
    rec = record(seed=7, **kw)
    mutate(rec)
    return json.dumps(rec)


@contextlib.contextmanager
def deadline(seconds: int = 5):
    """Fail instead of hanging: a reader blocked on a FIFO or reading /dev/zero gets an exception."""
    def expire(signum, frame):
        raise TimeoutError(f"a reader took more than {seconds} s (blocked on a special file?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(results: Path) -> tuple[int, list[str]]:
    """``nlbench results check``: exit code and stdout lines."""
    with deadline():
        res = runner.invoke(app, ["results", "check", "--results-dir", str(results)])
    return res.exit_code, res.stdout.splitlines()


def problems_of(results: Path) -> dict[str, str]:
    with deadline():
        records, problems = scan_records(results)
    assert sorted(r["seed"] for r in records) == [0, 1, 2]  # the valid records always come through
    return {p.path.name: p.problem for p in problems}


def assert_reported(results: Path, name: str, fragment: str) -> None:
    """The one planted file is reported by scan_records and results check (exit 1), nothing else is."""
    found = problems_of(results)
    assert set(found) == {name} and fragment in found[name], found
    code, lines = check(results)
    assert code == 1 and lines[-1] == f"3 valid records, 1 problem(s) in {results}", lines
    assert lines[:-1] == [f"{runs_dir(results) / name}: {found[name]}"]


# ------------------------------------------------------------------------------------------- file shapes


def test_json_nested_100k_deep_is_reported(results):
    plant(results, "deep.json", "[" * 100_000 + "]" * 100_000)
    assert_reported(results, "deep.json", "unreadable: JSON nested too deeply")


def test_json_deeper_than_the_schema_allows_is_reported(results):
    inner = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    plant(results, "deep.json", tampered(lambda r: None).replace('"env": {}', f'"env": {{"x": {inner}}}'))
    assert_reported(results, "deep.json", f"schema: nested deeper than {MAX_DEPTH} levels")


def test_fifo_is_reported_without_blocking(results):
    os.mkfifo(runs_dir(results) / "pipe.json")
    assert_reported(results, "pipe.json", "unreadable: a FIFO, not a regular file")
    with deadline():  # the grid's resume scan: a FIFO where a record should be is not a finished run
        assert find_record(results, "pipe") is None


@pytest.mark.parametrize("kind", ["directory", "socket", "device"])
def test_other_special_files_are_reported(results, kind):
    path = runs_dir(results) / f"{kind}.json"
    if kind == "directory":
        path.mkdir()
        expect = "a directory"
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
        expect = "a socket"
    else:
        path.symlink_to("/dev/zero")  # reading it would never end
        expect = "a character device"
    assert_reported(results, f"{kind}.json", f"unreadable: {expect}, not a regular file")


def test_symlink_loop_and_dangling_symlink_are_reported(results):
    (runs_dir(results) / "loop.json").symlink_to("loop.json")
    assert_reported(results, "loop.json", "unreadable: Too many levels of symbolic links")
    (runs_dir(results) / "loop.json").unlink()
    (runs_dir(results) / "gone.json").symlink_to("nowhere.json")
    assert_reported(results, "gone.json", "unreadable: No such file or directory")


def test_oversized_file_is_refused_unread(results):
    path = runs_dir(results) / "huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_RECORD_BYTES + 1)  # sparse: no disk used
    assert_reported(results, "huge.json", f"over the limit of {MAX_RECORD_BYTES} bytes")


def test_runs_that_is_not_a_folder_is_reported(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    assert scan_records(tmp_path)[1][0].problem == "not a folder of records"
    code, lines = check(tmp_path)
    assert code == 1 and lines[0] == f"{tmp_path / 'runs'}: not a folder of records"


@pytest.mark.parametrize("text, fragment", [
    (b"\xff\xfe{}", "unreadable: not UTF-8 text"),
    ("", "unreadable: Expecting value"),
    ('{"schema": 1, "seed": ' + "9" * 5000 + "}", "unreadable: a number too long to convert"),
])
def test_undecodable_files_are_reported(results, text, fragment):
    plant(results, "bad.json", text)
    assert_reported(results, "bad.json", fragment)


# ----------------------------------------------------------------------------------- wrong types, ranges


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.update(config="a string"), "key 'config' has type str"),
    (lambda r: r.update(env=[]), "key 'env' has type list"),
    (lambda r: r.update(final=[0.5]), "key 'final' has type list"),
    (lambda r: r["history"][0].update(epoch="one"), "key 'history[0].epoch' has type str"),
    (lambda r: r["history"][1].update(epoch=1), "key 'history[1].epoch' is 1, expected 2"),
    (lambda r: r.update(seed=True), "key 'seed' has type bool"),
    (lambda r: r.update(seed=2**64), "key 'seed' is 18446744073709551616, outside [0, 2**63)"),
    (lambda r: r.update(schema="1"), "key 'schema' has type str"),
    (lambda r: r.update(oracle="yes"), "key 'oracle' has type str"),
    (lambda r: r["config"].update(epochs="2"), "key 'config.epochs' has type str"),
    (lambda r: r["config"].update(method_options=[]), "key 'config.method_options' has type list"),
    (lambda r: r["config"].update(dataset="other"), "config.dataset 'other' differs from dataset 'synthetic'"),
    (lambda r: r["config"]["method_options"].update({"a\n# b": 1}), "has the option name 'a\\n# b'"),
    (lambda r: r.update(history=[{"epoch": 1}]), "history[0] lacks epoch/test_acc/epoch_time_s"),
    (lambda r: r.update(config_hash="../x"), "key 'config_hash' is '../x', not a hex hash"),
    (lambda r: r.update(method="erm|x\n# y"), "key 'method' is 'erm|x\\n# y', not a plain name"),
    (lambda r: r.update(dataset="../../x"), "key 'dataset' is '../../x', not a plain name"),
    (lambda r: r.update(features={"epochs": "x"}), "features lacks 'sample_index'"),
])
def test_wrong_types_are_reported(results, mutate, fragment):
    plant(results, "typed.json", tampered(mutate))
    assert_reported(results, "typed.json", fragment)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r["final"].update(last_acc=5.0), "key 'final.last_acc' is 5.0, outside [0, 1]"),
    (lambda r: r["final"].update(best_acc=-0.1), "key 'final.best_acc' is -0.1, outside [0, 1]"),
    (lambda r: r["history"][0].update(test_acc=2.0), "key 'history[0].test_acc' is 2.0, outside [0, 1]"),
    (lambda r: r["final"].update(last_acc=None), "key 'final.last_acc' is missing a value in a finished run"),
    (lambda r: r.update(wall_time_s=-1), "key 'wall_time_s' is -1, outside [0, inf)"),
    (lambda r: r["noise_report"].update(realised_rate=1.5), "key 'noise_report.realised_rate' is 1.5"),
    (lambda r: r["config"].update(epochs=1), "history has 2 epochs, the config only 1"),
    (lambda r: r["history"][0].update(epoch_time_s=10**400), "key 'history[0].epoch_time_s' is 1000000000"),
])
def test_out_of_range_values_are_reported(results, mutate, fragment):
    plant(results, "range.json", tampered(mutate))
    assert_reported(results, "range.json", fragment)


@pytest.mark.parametrize("token, fragment", [
    ("NaN", "unreadable: NaN is not JSON"), ("Infinity", "unreadable: Infinity is not JSON"),
    ("-Infinity", "unreadable: -Infinity is not JSON"), ("1e999", "unreadable: the number 1e999 overflows"),
])
def test_non_finite_numbers_are_reported(results, token, fragment):
    text = tampered(lambda r: r["final"].update(last_acc=0.123456)).replace("0.123456", token)
    plant(results, "nan.json", text)
    assert_reported(results, "nan.json", fragment)


def test_in_memory_nan_counts_as_missing_where_a_value_may_be():
    rec = record()
    rec["history"][0]["val_acc"] = math.nan  # the harness's "no validation split", stored as null
    assert validate_record(rec) == []
    rec["history"][0]["test_acc"] = math.nan
    assert validate_record(rec) == ["key 'history[0].test_acc' is nan, not a finite number"]


def test_many_problems_are_capped_in_one_line():
    rec = record()
    for key in ("oracle", "uses_meta", "uses_noise_rate", "created", "path", "run_name", "dataset_info", "sizes",
                "error", "method_options"):
        rec[key] = 1.5
    problems = validate_record(rec)
    assert len(problems) == 8 and problems[-1] == "and 3 more"


def test_leaderboard_skips_an_accuracy_of_500_percent(results, tmp_path):
    """The red team's 227.8%: a record claiming 5.0 was averaged in. Now it is skipped and reported."""
    plant(results, "inflated.json", tampered(lambda r: r["final"].update(last_acc=5.0, best_acc=5.0)))
    with deadline():
        res = runner.invoke(app, ["leaderboard", "--results-dir", str(results), "--out", "-"])
    assert res.exit_code == 0, res.output
    assert "| erm | **50.00 ± 0.00** | 3 |" in res.stdout and "500.00" not in res.stdout and "227" not in res.stdout
    assert res.stderr.splitlines() == [f"warning: skipped {runs_dir(results) / 'inflated.json'}: schema: key "
                                       "'final.last_acc' is 5.0, outside [0, 1]; key 'final.best_acc' is 5.0, "
                                       "outside [0, 1]"]


# ------------------------------------------------------------------------------- no field reaches a path


def test_plot_writes_nothing_outside_out_dir_for_a_hostile_dataset(results, tmp_path):
    plant(results, "escape.json", tampered(lambda r: (r.update(dataset="../../x"), r["config"].update(
        dataset="../../x"))))
    out = tmp_path / "a" / "b" / "plots"
    before = set(tmp_path.rglob("*"))
    with deadline(30):
        res = runner.invoke(app, ["plot", "--results-dir", str(results), "--out-dir", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.stderr and "key 'dataset' is '../../x', not a plain name" in res.stderr
    written = set(tmp_path.rglob("*")) - before
    assert written and all(p in out.parents or p == out or p.parent == out for p in written), written
    assert not list(tmp_path.rglob("x__*"))


def test_plot_names_are_sanitised_and_stay_inside_out_dir(tmp_path):
    """Second line of defence, for records that never went through the schema (a library caller's own)."""
    recs = [record(seed=s) for s in range(2)]
    for r in recs:
        r["dataset"] = r["config"]["dataset"] = "../../x"
        r["noise"] = r["config"]["noise"] = "../y"
    out = tmp_path / "deep" / "er" / "plots"
    paths = plot_all(recs, out)
    assert paths and all(p.parent == out and p.resolve().parent == out.resolve() for p in paths)
    assert not [p for p in tmp_path.rglob("*.png") if p.parent != out]
    assert safe_file_name("../../x__mlp__e2__../y__acc.png") == "_._.._x__mlp__e2__.._y__acc.png"
    assert safe_file_name("erm__sym20__acc.png") == "erm__sym20__acc.png"  # valid names are kept as they are


def test_a_planted_symlink_cannot_redirect_a_plot(tmp_path):
    out = tmp_path / "plots"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "s__sym20__acc.png").symlink_to(victim)
    with pytest.raises(NLBenchError, match="refusing to write .*outside"):
        out_path(out, "s__sym20__acc.png")
    recs = [record(seed=s) for s in range(2)]
    target = out / f"synthetic__{recs[0]['model']}__e2__sym20__acc.png"
    target.symlink_to(victim)
    with pytest.raises(NLBenchError, match="refusing to write"):
        plot_all(recs, out)
    assert victim.read_text() == "keep me"


def test_plot_features_refuses_a_malformed_view_in_one_line(tmp_path):
    rec = record()
    rec["features"] = {"sample_index": [0, 1], "noisy_label": [0, 7], "true_label": [0, 1], "is_noisy": [False, True],
                       "classes": ["a", "b"], "epochs": {"0": [[0.0, 0.0], [1.0, 1.0]]}}
    path = tmp_path / "rec.json"
    path.write_text(json.dumps(rec))
    res = runner.invoke(app, ["plot", "features", str(path), "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 2 and res.stderr.startswith("error: cannot read record")
    assert not (tmp_path / "f.png").exists()
    assert "key 'features.noisy_label[1]' is 7, outside [0, 1]" in res.stderr and len(res.stderr.splitlines()) == 1
    rec["features"]["noisy_label"] = [0, 1]
    path.write_text(json.dumps(rec))
    res = runner.invoke(app, ["plot", "features", str(path), "--out", str(tmp_path / "f.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ no raw text in Markdown


def _table_rows_ok(md: str) -> None:
    """Every table line has as many unescaped cell separators as its header."""
    width = None
    for line in md.splitlines():
        if not line.startswith("|"):
            width = None
            continue
        n = len(re.findall(r"(?<!\\)\|", line))
        width = n if width is None else width
        assert n == width, line


def test_table_refuses_a_method_name_with_a_pipe_and_a_newline(results):
    evil = "x|y\n# z"
    plant(results, "evil.json", tampered(lambda r: (r.update(method=evil), r["config"].update(method=evil))))
    with deadline():
        res = runner.invoke(app, ["table", "--by", "meta_size", "--results-dir", str(results)])
    assert res.exit_code == 0, res.output
    assert "key 'method' is 'x|y\\n# z', not a plain name" in res.stderr
    assert "# z" not in res.stdout and "x|y" not in res.stdout
    _table_rows_ok(res.stdout)


def test_table_escapes_option_values_and_config_text(results):
    """Option values are free text inside valid records: they are escaped, never raw Markdown."""
    evil = "a|b\n## injected | row"
    for seed in range(2):
        write_record(results, record(method="surrogate", seed=seed, method_options={"mode": evil}))
    with deadline():
        res = runner.invoke(app, ["table", "--by", "meta_size", "--results-dir", str(results)])
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert not [line for line in res.stdout.splitlines() if line.startswith("## injected")]
    assert 'surrogate[mode="a\\|b\\\\n## injected \\| row"]' in res.stdout
    _table_rows_ok(res.stdout)


def test_render_sweep_escapes_record_text_it_is_given():
    """The library function escapes too: a caller's own records (never validated) cannot inject Markdown."""
    recs = [record(seed=s) for s in range(2)]
    for r in recs:
        r["method"] = r["config"]["method"] = "x|y\n# z"
        r["noise"] = "n|\n## h"
    md = render_sweep(recs, "meta_size")
    assert not [line for line in md.splitlines() if line.startswith(("# z", "## h"))]
    assert "| 40 | x\\|y # z |" in md
    _table_rows_ok(md)
