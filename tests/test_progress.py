"""Progress off a terminal: one plain line per epoch (run) and per finished run (grid) on stdout, as it happens;
nothing with --no-progress; stdout stays pure JSON with --json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from nlbench.benchmark.progress import ProgressBar, fmt_duration

TINY_RUN = ["run", "--dataset", "synthetic", "--data-opt", "n_train=200", "--data-opt", "n_test=50", "--epochs", "3",
            "--meta-size", "20", "--device", "cpu"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/3 train_loss (\d+\.\d{4}) test_acc (\d+\.\d{2})% \(elapsed \d+m\d\ds, "
                        r"ETA \d+m\d\ds\)$")


def cli(*args: str) -> subprocess.CompletedProcess:
    """The console entry point with stdout and stderr piped (not a terminal), as in CI or ``make run > log``."""
    env = {k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}
    return subprocess.run([sys.executable, "-m", "nlbench.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_run_prints_one_line_per_epoch_off_a_terminal(tmp_path):
    proc = cli(*TINY_RUN, "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3, proc.stdout
    matches = [EPOCH_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [1, 2, 3]
    # the lines carry the record's numbers, and come before the summary
    rec = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    for m, h in zip(matches, rec["history"], strict=True):
        assert float(m.group(2)) == round(h["train_loss"], 4)
        assert m.group(3) == f"{100 * h['test_acc']:.2f}"
    assert proc.stdout.index(lines[-1]) < proc.stdout.index("mean last 3")
    assert "mean last 5" not in proc.stdout  # a 3-epoch run averages 3 epochs
    assert proc.stderr == ""


def test_no_progress_and_json_keep_stdout_clean(tmp_path):
    quiet = cli(*TINY_RUN, "--results-dir", str(tmp_path), "--no-progress")
    assert quiet.returncode == 0 and "epoch 1/3" not in quiet.stdout, quiet.stdout
    as_json = cli(*TINY_RUN, "--results-dir", str(tmp_path), "--force", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["final"]["epochs_done"] == 3  # stdout is the record alone
    assert [line for line in as_json.stderr.splitlines() if EPOCH_LINE.match(line)] == as_json.stderr.splitlines()
    assert len(as_json.stderr.splitlines()) == 3


def test_grid_prints_one_line_per_finished_run(tmp_path):
    proc = cli("grid", "--methods", "erm,oracle", "--noises", "sym40", "--seeds", "0,1", "--dataset", "synthetic",
               "--epochs", "1", "--meta-size", "40", "--data-opt", "n_train=300", "--data-opt", "n_test=100",
               "--device", "cpu", "--results-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "runs finished" in line]
    assert len(lines) == 4, proc.stdout
    for i, line in enumerate(lines, 1):
        assert re.match(rf"^grid custom-\w+: {i}/4 runs finished \({i} done, 0 failed\), {4 - i} left "
                        r"\(elapsed \d+m\d\ds, ETA \d+m\d\ds\): synthetic__\S+$", line), line
    assert "4 done, 0 skipped, 0 failed, 0 errors" in proc.stdout.splitlines()[-1]
    # no runs epoch lines from inside the grid: one line per run is the grid's granularity
    assert "epoch 1/1" not in proc.stdout


def test_grid_lines_count_failures(capsys):
    bar = ProgressBar(True, 3, "grid g")  # capsys: stdout is not a terminal
    bar.advance("a")
    bar.advance("b", failed=True)
    bar.advance("c")
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (elapsed")[0] for line in lines] == [
        "grid g: 1/3 runs finished (1 done, 0 failed), 2 left",
        "grid g: 2/3 runs finished (1 done, 1 failed), 1 left",
        "grid g: 3/3 runs finished (2 done, 1 failed), 0 left"]
    assert lines[1].endswith(": b")


def test_disabled_or_empty_prints_nothing(capsys):
    for bar in (ProgressBar(False, 10, "x", epochs=2), ProgressBar(True, 0, "x")):
        bar.advance()
        bar.epoch_done(1, 0.5, 0.5)
        bar.close()
    assert capsys.readouterr().out == ""


def test_fmt_duration():
    assert [fmt_duration(s) for s in (0, 59.6, 75.4, 3725, float("nan"), -1)] == [
        "0m00s", "1m00s", "1m15s", "1h02m05s", "?", "?"]
