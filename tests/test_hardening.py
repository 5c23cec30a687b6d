"""Hardening, end to end with real faults: signals during ``nlbench run`` and ``nlbench grid``, a diverging
method inside a grid, a writer killed mid-record, determinism across processes, and bad input through the
console entry point.

Every fault is real: the CLI runs in its own interpreter and is interrupted with SIGINT or killed with SIGKILL
while it trains; the diverging method is a plugin installed in a temporary folder that only the child processes
see (the test process's method registry never holds it). What tests/test_grid.py, test_cli.py and
test_harness.py already cover (SIGKILL of a grid, two drivers at once, each planted problem of
``results check`` alone, in-process user errors) is not repeated here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nlbench
from nlbench.benchmark.checkpoint import checkpoints_dir
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.records import runs_dir, scan_records, write_record
from nlbench.cli import app

ROOT = Path(__file__).resolve().parents[1]
# One torch thread per child: runs on a shared machine stay comparable, and two children fit two cores.
ENV = {**{k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}, "OMP_NUM_THREADS": "1"}
SYN = ["--dataset", "synthetic", "--data-opt", "n_test=200", "--meta-size", "40", "--device", "cpu"]
LONG_EPOCHS = 20
# A checkpoint after every epoch: its appearance is the event that says training is under way (no clock), and
# the rerun must continue from it to the history an uninterrupted run has.
LONG_RUN = ["run", *SYN, "--data-opt", "n_train=4000", "--noise", "sym40", "--epochs", str(LONG_EPOCHS),
            "--batch-size", "16", "--val-size", "40", "--no-progress", "--checkpoint-every", "0"]
SUMMARY = re.compile(r"grid \S+: (\d+) done, (\d+) skipped, (\d+) failed, (\d+) errors")


def nlbench_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "nlbench.cli", *(str(a) for a in args)]


def start(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(nlbench_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or ENV)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_until(ready, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before the fault could be injected: "
                        f"{proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the process")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def summary_counts(text: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(text)
    assert m, text
    return tuple(int(g) for g in m.groups())


def listing(results: Path) -> list[str]:
    """Every entry under ``results/runs`` (dot-files, temp files and claims included)."""
    folder = runs_dir(results)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------ nlbench run


@dataclass
class Interrupted:
    """One results folder: the interrupted process, what it left behind, and the same command run again."""

    results: Path
    returncode: int
    stdout: str
    stderr: str
    left: list[str]
    scanned: tuple[list[dict], list]
    rerun: tuple[int, str, str]


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory) -> dict[str, Interrupted]:
    """LONG_RUN started twice at once (separate results folders) and, mid-training, sent SIGINT and SIGKILL
    respectively; then the same command (plus --json) run again in each folder, again both at once. Shared by
    the signal tests and the determinism test: two processes on two cores cost the wall time of one."""
    base = tmp_path_factory.mktemp("signals")
    sigs = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}
    procs = {name: start(*LONG_RUN, "--results-dir", base / name) for name in sigs}
    for name, proc in procs.items():
        # the first checkpoint is written at the end of epoch 1: the signal lands mid-training
        wait_until(lambda folder=base / name: any(checkpoints_dir(folder).glob("*.pt")), proc)
        proc.send_signal(sigs[name])
    first = {name: finish(proc, timeout=60) for name, proc in procs.items()}
    left = {name: (listing(base / name), scan_records(base / name)) for name in sigs}
    reruns = {name: start(*LONG_RUN, "--results-dir", base / name, "--json") for name in sigs}
    return {name: Interrupted(base / name, *first[name], *left[name], finish(reruns[name])) for name in sigs}


@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_signal_during_run_leaves_nothing_and_the_rerun_writes_one_record(interrupted_runs, sig):
    run = interrupted_runs[sig]
    if sig == "SIGINT":
        assert (run.returncode, run.stdout) == (130, "")
        assert run.stderr == "interrupted: no record written; rerun the same command to go on from its last " \
            "checkpoint\n"
    else:
        assert run.returncode == -signal.SIGKILL
    left = run.left
    if sig == "SIGKILL":  # a killed run cannot release its claim: it stays, stale at once (its pid is dead)
        claims = [p for p in left if p.startswith(".claims")]
        assert len(claims) == 2 and claims[1].endswith(".claim"), left
        left = [p for p in left if p not in claims]
    assert left == [] and run.scanned == ([], [])  # no record, no half record, no temp file

    rc, out, err = run.rerun
    assert (rc, err) == (0, ""), err
    rec = json.loads(out)
    records, problems = scan_records(run.results)
    assert problems == [] and [r["config_hash"] for r in records] == [rec["config_hash"]]
    assert listing(run.results) == [f"{rec['run_name']}.json"]
    assert rec["status"] == "ok" and [h["epoch"] for h in records[0]["history"]] == list(range(1, LONG_EPOCHS + 1))
    assert 2 <= rec["resumed_from_epoch"] <= LONG_EPOCHS  # it went on from the checkpoint, not from epoch 1
    assert not any(checkpoints_dir(run.results).glob("*"))  # removed with the record


def test_same_command_twice_gives_identical_results_and_notes_its_environment(interrupted_runs):
    """Both reruns resumed from checkpoints of different epochs, and still agree bit for bit."""
    a, b = (json.loads(interrupted_runs[sig].rerun[1]) for sig in ("SIGINT", "SIGKILL"))
    keys = ("epoch", "train_loss", "test_acc", "val_acc", "lr")
    assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
    assert a["final"] == b["final"] and a["config_hash"] == b["config_hash"]
    assert a["noise_report"] == b["noise_report"] and a["sizes"] == b["sizes"]
    assert len(a["history"]) == LONG_EPOCHS and 0.25 < a["final"]["last_acc"] <= 1.0  # it learned something
    env = a["env"]
    assert env["device"] == "cpu" and env["threads"] == 1  # OMP_NUM_THREADS=1 in the child
    assert (env["nlbench"], env["torch"], env["numpy"]) == (nlbench.__version__, torch.__version__, np.__version__)
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["platform"] and env["device_name"] and (env["cuda"], env["cudnn"]) == (None, None)
    on_disk = json.loads(Path(a["path"]).read_text())
    assert on_disk["history"] == a["history"] and on_disk["env"] == env


# ----------------------------------------------------------------------------------------- nlbench grid


def grid_args(results: Path, workers: int) -> list[str]:
    return ["grid", "--methods", "erm,erm-meta", "--noises", "sym40", "--seeds", "0,1,2", "--dataset", "synthetic",
            "--epochs", "2", "--meta-size", "40", "--data-opt", "n_train=2000", "--data-opt", "n_test=100",
            "--workers", str(workers), "--device", "cpu", "--results-dir", str(results), "--no-progress"]


def test_sigint_mid_grid_stops_workers_releases_claims_and_resumes(tmp_path):
    results = tmp_path / "res"
    proc = start(*grid_args(results, workers=2))
    spawned: set[int] = set()  # the pool's worker processes
    helpers: set[int] = set()  # any other child (multiprocessing's resource tracker)

    def first_record() -> bool:
        for pid in children(proc.pid):
            (spawned if b"spawn_main" in cmdline(pid) else helpers).add(pid)
        return any(runs_dir(results).glob("*.json"))

    wait_until(first_record, proc, timeout=180)
    proc.send_signal(signal.SIGINT)  # as Ctrl-C would, but to the driver only: it must stop its workers itself
    rc, out, err = finish(proc, timeout=60)
    records, problems = scan_records(results)
    n = len(records)
    assert (rc, out, problems) == (130, "", []), err
    assert 1 <= n < 6
    assert err.splitlines()[-1] == (f"interrupted: {n} of 6 runs finished in this call; claims released, rerun the "
                                    "same command to resume")
    assert listing(results) == [".claims", *sorted(f"{r['run_name']}.json" for r in records)]  # no claim, no temp
    # the pool's workers were terminated and joined before the driver exited; multiprocessing's resource tracker
    # (the other child) notices the driver's exit on its own, a moment later
    assert len(spawned) >= 2 and not [pid for pid in spawned if alive(pid)]
    deadline = time.monotonic() + 10
    while [pid for pid in spawned | helpers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)]
    check = CliRunner().invoke(app, ["results", "check", "--results-dir", str(results)])
    assert (check.exit_code, check.stdout) == (0, f"{n} valid records, 0 problem(s) in {results}\n")

    # the same grid (--workers is not part of it), in-process this time: spawning workers costs seconds
    rc, out, err = finish(start(*grid_args(results, workers=1)))
    assert rc == 0, err
    assert summary_counts(out) == (6 - n, n, 0, 0)
    records, problems = scan_records(results)
    assert problems == [] and len(records) == 6 and len({r["config_hash"] for r in records}) == 6
    assert {(r["method"], r["seed"]) for r in records} == {(m, s) for m in ("erm", "erm-meta") for s in (0, 1, 2)}


NAN_PLUGIN = """
import torch.nn.functional as F

from nlbench.methods import Method, StepOutput, register_method


@register_method("nan-from-epoch-2")
class NaNFromEpoch2(Method):
    \"\"\"Cross-entropy until epoch 2, then a NaN loss (a diverging method).\"\"\"

    def step(self, batch, model):
        loss = F.cross_entropy(model(batch.x), batch.y)
        return StepOutput(loss * float("nan") if batch.epoch >= 2 else loss)
"""


def install_plugin(root: Path) -> dict:
    """A package with an ``nlbench.methods`` entry point in ``root``; the environment that puts it on the path of
    child processes (the test process never imports it)."""
    (root / "nanplug").mkdir(parents=True)
    (root / "nanplug" / "__init__.py").write_text(textwrap.dedent(NAN_PLUGIN))
    dist = root / "nanplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nanplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nlbench.methods]\nnanplug = nanplug\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), ENV.get("PYTHONPATH")]))}


def test_divergence_in_a_grid_is_recorded_and_counted_while_the_grid_goes_on(tmp_path):
    results = tmp_path / "res"
    env = install_plugin(tmp_path / "plugin")
    rc, out, err = finish(start("grid", "--methods", "nan-from-epoch-2,erm", "--noises", "sym40", "--seeds", "0,1",
                                *SYN[:2], "--data-opt", "n_train=400", "--data-opt", "n_test=100", "--epochs", "3",
                                "--meta-size", "40", "--device", "cpu", "--results-dir", results, "--no-progress",
                                env=env))
    assert rc == 0, err
    assert summary_counts(out) == (2, 0, 2, 0)
    records, problems = scan_records(results)
    assert problems == [] and len(records) == 4
    failed = sorted((r for r in records if r["method"] == "nan-from-epoch-2"), key=lambda r: r["seed"])
    ok = [r for r in records if r["method"] == "erm"]
    assert err.splitlines() == [f"failed: {r['run_name']}: non-finite training loss (nan) in epoch 2" for r in failed]
    for r in failed:
        assert r["status"] == "failed"
        assert r["error"] == {"reason": "non-finite training loss (nan) in epoch 2", "epoch": 2}
        assert [h["epoch"] for h in r["history"]] == [1] and r["final"]["epochs_done"] == 1
    assert [(r["status"], len(r["history"])) for r in ok] == [("ok", 3), ("ok", 3)]

    res = CliRunner().invoke(app, ["leaderboard", "--results-dir", str(results), "--out", "-"])
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert "from 4 run records (2 ok, 2 failed)" in res.stdout
    lines = res.stdout.splitlines()
    table = lines[lines.index("### sym40 (realised noise rate 40.00%)") + 2:]
    table = table[:table.index("")]
    cols = [c.strip() for c in table[0].split("|")[1:-1]]
    rows = {r[0]: dict(zip(cols, r, strict=True)) for r in ([c.strip() for c in line.split("|")[1:-1]]
                                                            for line in table[2:])}
    assert sorted(rows) == ["erm", "nan-from-epoch-2"]
    assert (rows["nan-from-epoch-2"]["n"], rows["nan-from-epoch-2"]["failed"]) == ("0", "2")
    assert (rows["erm"]["n"], rows["erm"]["failed"]) == ("2", "0")


# -------------------------------------------------------------------------------- a writer killed mid-record


def fake_record(cfg: RunConfig) -> dict:
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": cfg.method,
            "noise": cfg.noise, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed, "status": "ok",
            "config": cfg.to_dict(), "env": {}, "noise_report": {}, "wall_time_s": 0.1,
            "history": [{"epoch": 1, "test_acc": 0.5, "epoch_time_s": 0.1}],
            "final": {"last_acc": 0.5, "best_acc": 0.5, "last5_acc": 0.5}}


def test_killed_writer_and_planted_problems_are_reported_and_skipped(tmp_path):
    results = tmp_path / "res"
    cfg = RunConfig(method="erm", noise="sym40", dataset="synthetic", epochs=1)
    good = write_record(results, fake_record(cfg))
    runs = runs_dir(results)
    # A real writer killed -9 after writing its temp file, before renaming it over the record.
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from nlbench.benchmark import records

        def stall(fd):
            print("written", flush=True)
            time.sleep(600)

        records.os.fsync = stall
        records.atomic_write_text({str(runs / "killed.json")!r}, '{{"schema": 1')
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert writer.stdout.readline() == "written\n"
    writer.kill()
    writer.wait()
    temp = [p for p in runs.iterdir() if p.name.startswith(".killed.json.tmp-")]
    assert len(temp) == 1 and not (runs / "killed.json").exists()
    (runs / "garbage.json").write_bytes(b"\x00\xff{not json")
    (runs / "schema.json").write_text(json.dumps({"schema": 1, "method": "erm"}))
    (runs / "zz-copy.json").write_text(good.read_text())
    assert [r["config_hash"] for r in scan_records(results)[0]] == [cfg.hash()]

    res = CliRunner().invoke(app, ["results", "check", "--results-dir", str(results)])
    expected = [
        f"{temp[0]}: orphaned temp file",
        f"{runs / 'garbage.json'}: unreadable: ",
        f"{runs / 'schema.json'}: schema: missing key 'noise'; missing key 'dataset'",
        f"{runs / 'zz-copy.json'}: duplicate config hash {cfg.hash()} (also {good.name})",
        f"1 valid records, 4 problem(s) in {results}",
    ]
    lines = res.stdout.splitlines()
    assert res.exit_code == 1 and len(lines) == len(expected), res.stdout
    for line, prefix in zip(lines, expected, strict=True):
        assert line.startswith(prefix), (line, prefix)

    res = CliRunner().invoke(app, ["leaderboard", "--results-dir", str(results), "--out", "-"])
    assert res.exit_code == 0 and "from 1 run records (1 ok, 0 failed)" in res.stdout
    assert res.stderr.splitlines() == [f"warning: skipped {line}" for line in lines[:-1]]  # one line per bad file

    for p in (temp[0], runs / "garbage.json", runs / "schema.json", runs / "zz-copy.json"):
        p.unlink()
    res = CliRunner().invoke(app, ["results", "check", "--results-dir", str(results)])
    assert (res.exit_code, res.stdout) == (0, f"1 valid records, 0 problem(s) in {results}\n")


# --------------------------------------------------------------------------------- bad input, end to end


def _load_table_script():
    spec = importlib.util.spec_from_file_location("bad_input_table", ROOT / "benchmarks" / "bad_input_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bad_input_table", module)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


TABLE = _load_table_script()
# Rows whose message tests/test_cli.py already checks in-process run only with -m slow: each child costs ~2 s of
# CPU for the torch import alone.
IN_PROCESS_ALREADY = {"method", "noise", "dataset", "model", "sym-5", "sym100", "asym", "meta-neg", "epochs0",
                      "seed-neg", "seed-text", "root", "idx-truncated", "results-run"}


@pytest.fixture(scope="module")
def bad_input_outcomes(request, tmp_path_factory) -> dict:
    """Outcomes of every selected bad-input case, run two at a time (each child is mostly the torch import)."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [item.callspec.params["case"] for item in request.session.items
             if item.originalname == "test_bad_input_one_error_line_exit_2_nothing_lost"]
    root = tmp_path_factory.mktemp("bad-input")
    template = TABLE.make_template(root / "template")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip([c.id for c in cases], pool.map(lambda c: TABLE.run_case(c, template, root / c.id), cases),
                        strict=True))


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.id in IN_PROCESS_ALREADY
                                               else []) for c in TABLE.CASES])
def test_bad_input_one_error_line_exit_2_nothing_lost(case, bad_input_outcomes):
    outcome = bad_input_outcomes[case.id]
    assert outcome.problems() == [], (outcome.returncode, outcome.stdout, outcome.stderr)
