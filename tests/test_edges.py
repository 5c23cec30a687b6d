"""Edges of the input space (issue 16): every numeric argument checked once, in ``RunConfig.validate`` (CLI, grids
and the Python API alike), dataset and method options in finite ranges, one canonical name per noise spec, and
claims that cannot be faked, hung or outlived."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
import typing

import pytest
from typer.testing import CliRunner

from nlbench.benchmark import grid as G
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import canonical_config
from nlbench.benchmark.records import find_record, pid_alive, record_path, write_record
from nlbench.cli import app
from nlbench.datasets import load_dataset
from nlbench.errors import NLBenchError
from nlbench.noise import parse_noise
from nlbench.options import Range

runner = CliRunner()
SYN = ["--dataset", "synthetic", "--data-opt", "n_train=300", "--data-opt", "n_test=100", "--meta-size", "40",
       "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)


def user_error(args, *fragments: str) -> str:
    """Run ``nlbench *args`` in-process: exit 2, one ``error:`` line on stderr containing ``fragments``."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output and res.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------- numeric edges

BAD_RUN = [
    (["--momentum", "-1"], "--momentum must be in [0, 1), got -1.0"),
    (["--momentum", "1"], "--momentum must be in [0, 1), got 1.0"),
    (["--weight-decay", "-1"], "--weight-decay must be in [0, 1], got -1.0"),
    (["--weight-decay", "2"], "--weight-decay must be in [0, 1]"),
    (["--lr", "inf"], "--lr must be finite, got inf"),
    (["--lr", "nan"], "--lr must be finite, got nan"),
    (["--lr", "1e999"], "--lr must be finite"),
    (["--lr", "0"], "--lr must be in (0, 10], got 0.0"),
    (["--lr", "11"], "--lr must be in (0, 10], got 11.0"),
    (["--epochs", "99999999999999999999"], "--epochs must be in [1, 10000], got 99999999999999999999"),
    (["--epochs", "10001"], "--epochs must be in [1, 10000]"),
    (["--batch-size", "1"], "--batch-size must be in [2, 65536], got 1"),
    (["--batch-size", "65537"], "--batch-size must be in [2, 65536], got 65537"),
    (["--meta-size", "10000001"], "--meta-size must be in [0, 1e+07]"),
    (["--val-size", "-1"], "--meta-size and --val-size must be non-negative, got --val-size -1"),
    (["--val-size", "10000001"], "--val-size must be in [0, 1e+07]"),
    (["--seed", str(2**63)], f"--seed must be an integer in [0, 2^63), got {2**63}"),
    (["--noise-seed", str(2**63)], "--noise-seed must be an integer in [0, 2^63)"),
    (["--schedule", "step", "--milestones", "2"], "--milestones must be strictly increasing epochs in [1, 1]"),
    (["--epochs", "5", "--schedule", "step", "--milestones", "3,3"], "got (3, 3)"),
    (["--epochs", "5", "--schedule", "step", "--milestones", "0,2"], "got (0, 2)"),
    (["--data-opt", "dim=100000000"], "dataset 'synthetic': option dim must be in [1, 100000], got 100000000"),
    (["--data-opt", "separation=nan"], "dataset 'synthetic': option separation must be"),
    (["--data-opt", "num_classes=1"], "dataset 'synthetic': option num_classes must be in [2, 1000], got 1"),
    (["--data-opt", "n_train=1000000", "--data-opt", "dim=100000"], "over the limit of 200,000,000"),
    (["--opt", "nonsense=1"], "unknown option 'nonsense' for method 'erm'"),
]


@pytest.mark.parametrize("args,fragment", BAD_RUN, ids=[" ".join(a) for a, _ in BAD_RUN])
def test_run_refuses_bad_numbers_with_one_line(args, fragment, tmp_path):
    user_error(["run", *SYN, *args, "--results-dir", tmp_path], fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_console_entry_point_huge_int_is_one_line(tmp_path):
    """typer's own parsing of a huge integer, through the real entry point: one line, exit 2, no work."""
    env = {k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}
    for value, fragment in (("99999999999999999999", "--epochs must be in [1, 10000]"),
                            ("9" * 5000, "Invalid value for '--epochs'")):
        proc = subprocess.run([sys.executable, "-m", "nlbench.cli", "run", "--dataset", "synthetic", "--epochs", value,
                               "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], proc.stderr
        assert len(lines[0]) < 300  # a 5000-digit number is not echoed back whole
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args,fragment", [
    (["--workers", "100000"], "--workers must be at most 512 (one training process each), got 100000"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--cpus-per-run", "nan"], "--cpus-per-run must be positive and finite, at most 1024, got nan"),
    (["--cpus-per-run", "inf", "--executor", "ray"], "--cpus-per-run must be positive and finite"),
    (["--cpus-per-run", "0"], "--cpus-per-run must be positive"),
    (["--gpus-per-run", "inf"], "--gpus-per-run must be non-negative and finite, at most 64, got inf"),
    (["--gpus-per-run", "-1"], "--gpus-per-run must be non-negative"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--epochs", "20000"], "--epochs must be in [1, 10000], got 20000"),
    (["--lr", "inf"], "--lr must be finite"),
    (["--batch-size", "1"], "--batch-size must be in [2, 65536]"),
    (["--seeds", str(2**63)], "--seed must be an integer in [0, 2^63)"),
    (["--claim-ttl", "0"], "--claim-ttl must be a finite number of seconds >= 10, got 0.0"),
    (["--claim-ttl", "-1"], "--claim-ttl must be a finite number of seconds >= 10, got -1.0"),
    (["--claim-ttl", "nan"], "--claim-ttl must be a finite number of seconds >= 10, got nan"),
    (["--claim-ttl", "inf"], "--claim-ttl must be a finite number of seconds >= 10, got inf"),
])
def test_grid_refuses_bad_numbers_before_any_work(args, fragment, tmp_path):
    user_error(["grid", "--methods", "erm", "--noises", "sym40", *SYN[:6], *args, "--results-dir", tmp_path],
               fragment)
    assert not tmp_path.joinpath("runs").exists() and not tmp_path.joinpath("grids").exists()


def test_results_check_refuses_a_bad_claim_ttl(tmp_path):
    user_error(["results", "check", "--results-dir", tmp_path, "--claim-ttl", "nan"],
               "--claim-ttl must be a finite number of seconds >= 10, got nan")


@pytest.mark.parametrize("kw,fragment", [
    (dict(gamma=0), "--gamma must be in (0, 1], got 0"),
    (dict(gamma=1.5), "--gamma must be in (0, 1]"),
    (dict(gamma=float("nan")), "--gamma must be finite"),
    (dict(lr=10**400), "--lr must be in (0, 10], got 10000000000"),  # too big for a float: no OverflowError
    (dict(lr="0.1"), "--lr must be a number, got '0.1'"),
    (dict(momentum=True), "--momentum must be a number, got True"),
    (dict(epochs=2.5), "--epochs must be an integer, got 2.5"),
    (dict(seed=-1), "--seed must be an integer in [0, 2^63), got -1"),
    (dict(milestones=[1, "a"]), "--milestones must be integers"),
    (dict(milestones=3), "--milestones must be integers, got 3"),
    (dict(epochs=3, milestones=(1, 4)), "--milestones must be strictly increasing epochs in [1, 3]"),
])
def test_python_api_gets_the_same_checks(kw, fragment):
    with pytest.raises(NLBenchError) as e:
        RunConfig(**kw)
    assert fragment in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 200


@pytest.mark.parametrize("opt,fragment", [
    ("hidden=100000000000", "method 'mwnet': option hidden must be in [1, 10000], got 100000000000"),
    ("meta_lr=inf", "method 'mwnet': option meta_lr must be finite, got 'inf'"),
    ("meta_lr=1e999", "method 'mwnet': option meta_lr must be finite, got inf"),
    ("hidden=1e3", "method 'mwnet': option hidden must be an integer, got 1000.0"),
])
def test_method_options_are_refused_before_any_work(opt, fragment, tmp_path):
    user_error(["run", *SYN, "--method", "mwnet", "--opt", opt, "--results-dir", tmp_path], fragment)
    assert not tmp_path.joinpath("runs").exists()  # refused before the claim, the folder, the data


def test_grids_refuse_bad_method_options_when_expanded():
    spec = G.GridSpec(name="t", dataset="synthetic", methods=("gce",), noises=("sym40",), seeds=(0,),
                      overrides={"method_options": {"q": float("inf")}})
    with pytest.raises(NLBenchError, match="method 'gce': option q must be finite"):
        G.expand(spec)


def test_grids_get_the_same_checks():
    spec = G.GridSpec(name="t", dataset="synthetic", methods=("erm",), noises=("sym40",), seeds=(0,),
                      overrides={"momentum": -1})
    with pytest.raises(NLBenchError, match=r"--momentum must be in \[0, 1\)"):
        G.expand(spec)
    with pytest.raises(NLBenchError, match=r"--milestones must be strictly increasing"):
        G.expand(G.GridSpec(name="t", dataset="synthetic", methods=("erm",), noises=("sym40",), seeds=(0,),
                            epochs=3, overrides={"schedule": "step", "milestones": [5]}))


def test_every_preset_is_valid():
    from nlbench.benchmark.config import PRESETS

    for name in PRESETS.list():
        RunConfig.from_preset(name)


def test_dataset_options_are_checked_against_their_ranges():
    with pytest.raises(NLBenchError, match=r"option train_size must be in \[10, 60000\], got 5"):
        load_dataset("fashion-mnist", train_size=5)  # refused before looking for files
    with pytest.raises(NLBenchError, match=r"option image_size must be in \[1, 4096\], got 0"):
        load_dataset("clothing1m", image_size=0)
    with pytest.raises(NLBenchError, match=r"option max_per_split must be in"):
        load_dataset("clothing1m", max_per_split=10**9)
    with pytest.raises(NLBenchError, match=r"option n_train must be in \[2, 60000\], got 1"):
        load_dataset("fashion-mnist-binary", n_train=1)
    with pytest.raises(NLBenchError, match=r"option seed must be in"):
        load_dataset("synthetic", seed=-1)
    assert len(load_dataset("synthetic", n_train="40", n_test=20).y_train) == 40  # CLI strings convert


def _numeric_ranges(hint) -> tuple[bool, list[Range]]:
    """(whether ``hint`` takes a number, the Ranges on it), through Optional/Union and Annotated."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        numeric, ranges = _numeric_ranges(args[0])
        return numeric, ranges + [m for m in hint.__metadata__ if isinstance(m, Range)]
    if origin in (typing.Union, types.UnionType):
        parts = [_numeric_ranges(a) for a in args]
        return any(n for n, _ in parts), [r for _, rs in parts for r in rs]
    return hint in (int, float), []


def test_every_method_and_dataset_number_has_a_finite_range():
    import inspect

    from nlbench.datasets import DATASETS
    from nlbench.methods import METHODS, list_methods

    owners = [(f"method {m}", METHODS.get(m).__init__) for m in list_methods()]
    owners += [(f"dataset {d}", DATASETS.get(d)) for d in DATASETS.list()]
    checked = 0
    for owner, fn in owners:
        hints = typing.get_type_hints(fn, include_extras=True)
        for name, p in inspect.signature(fn).parameters.items():
            if name in ("self", "root", "download", "expected_sizes") or name not in hints:
                continue
            numeric, ranges = _numeric_ranges(hints[name])
            if not numeric:
                continue
            assert ranges, f"{owner}: option {name} has no Range"
            for r in ranges:
                assert r.low is not None and r.high is not None, f"{owner}: option {name} range {r} is open-ended"
                assert math.isfinite(r.low) and math.isfinite(r.high)
                if p.default is not None and p.default is not inspect.Parameter.empty:
                    assert r.contains(p.default), f"{owner}: default {name}={p.default} outside {r}"
            checked += 1
    assert checked > 30


# ------------------------------------------------------------------------------------- noise names


@pytest.mark.parametrize("spelling,canonical", [
    ("sym40", "sym40"), ("SYM40", "sym40"), ("sym040", "sym40"), ("sym40.0", "sym40"), ("Sym40.000", "sym40"),
    (" sym40 ", "sym40"), ("pairflip45", "pairflip45"), ("PairFlip045", "pairflip45"), ("uniform40", "uniform40"),
    ("cifar10n-worst", "cifar10n-worst"), ("CIFAR10N-WORST", "cifar10n-worst"), ("clean", "clean"),
    ("CLEAN", "clean"), ("sym12.5", "sym12.5"), ("sym12.50", "sym12.5"), ("sym012.5", "sym12.5"), ("sym0", "sym0"),
    ("sym00", "sym0"), ("sym-0", "sym0"), ("idn40", "idn40"), ("asym40", "asym40"),
])
def test_noise_spellings_normalise_to_one_name(spelling, canonical):
    assert parse_noise(spelling).name == canonical
    assert parse_noise(spelling).rate == parse_noise(canonical).rate


@pytest.mark.parametrize("spec", ["sym\u0664\u0660", "sym\uff14\uff10", "sym\u0966\u0966", "\u017fym40", "sym40\u00a0"])
def test_noise_specs_in_other_digits_or_letters_are_refused(spec):
    with pytest.raises(NLBenchError, match="must be ASCII") as e:
        parse_noise(spec)
    assert "\n" not in str(e.value)


def test_one_experiment_one_config_hash():
    hashes = {canonical_config(RunConfig(noise=s, dataset="synthetic")).hash() for s in ("sym40", "SYM040",
                                                                                         "sym40.0", "Sym40.00")}
    assert len(hashes) == 1
    spec = G.GridSpec(name="t", dataset="synthetic", methods=("erm",), noises=("sym40", "SYM040", "sym40.0"),
                      seeds=(0,))
    assert [c.noise for c in G.expand(spec)] == ["sym40"]


@pytest.mark.parametrize("spec,fragment", [
    ("sym12.251", "has more than 2 decimals"),
    ("sym40." + "0" * 30 + "1", "has more than 2 decimals"),  # would be a second name (and file) for sym40
    ("sym" + "0" * 40 + "40", "is too long (at most 40 characters)"),
    ("x" * 5000, "is too long"),
])
def test_noise_specs_with_too_many_digits_are_refused_in_one_short_line(spec, fragment):
    with pytest.raises(NLBenchError, match=re.escape(fragment)) as e:
        parse_noise(spec)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_two_decimal_rates_keep_their_name():
    assert parse_noise("sym12.25").name == "sym12.25" and parse_noise("sym12.250").name == "sym12.25"


@pytest.mark.parametrize("method,spellings", [
    ("gce", [{"q": 0.7}, {"q": "0.7"}, {"q": "7e-1"}, {"q": 0.70}]),
    ("gce", [{"q": 1}, {"q": 1.0}, {"q": "1"}]),  # an int for a float option is the same run
    ("erm", [{}, {}]),
])
def test_method_option_spellings_have_one_hash(method, spellings):
    hashes = {canonical_config(RunConfig(method=method, dataset="synthetic", method_options=dict(o))).hash()
              for o in spellings}
    assert len(hashes) == 1


def test_dataset_option_spellings_have_one_hash():
    a, b = (canonical_config(RunConfig(dataset="synthetic", dataset_options={"n_train": v})) for v in (300, "300"))
    assert a.hash() == b.hash() and a.dataset_options == {"n_train": 300}


def test_committed_records_keep_their_hashes():
    """Canonicalisation must not move a committed record: every stored config re-hashes to its config_hash, except
    the records that per-noise-family defaults supersede (made before their method had them: canonicalisation now
    adds those options, so the same command is another run)."""
    from pathlib import Path

    from nlbench.methods import get_method
    from nlbench.noise import noise_family

    root = Path(__file__).resolve().parents[1] / "results"
    files = sorted(root.glob("**/runs/*.json"))
    if not files:
        pytest.skip("no committed records")
    moved = 0
    for f in files:
        rec = json.loads(f.read_text())
        cfg = RunConfig.from_dict(rec["config"])
        family = get_method(cfg.method).family_defaults.get(noise_family(cfg.noise), {})
        superseded = any(k not in cfg.method_options for k in family)
        if canonical_config(cfg).hash() != rec["config_hash"]:
            assert superseded, f
            moved += 1
    assert moved <= len(files) // 10  # elr and dividemix on the class-dependent, instance and human noises


def test_cli_refuses_non_ascii_digits(tmp_path):
    user_error(["run", *SYN, "--noise", "sym\u0664\u0660", "--results-dir", tmp_path], "must be ASCII")


# ------------------------------------------------------------------------------------------- claims


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def fake_record(cfg: RunConfig) -> dict:
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": cfg.method,
            "noise": cfg.noise, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed, "status": "ok",
            "oracle": False, "config": cfg.to_dict(), "env": {}, "noise_report": {},
            "history": [{"epoch": 1, "test_acc": 0.5, "epoch_time_s": 0.1}],
            "final": {"last_acc": 0.5, "best_acc": 0.5, "last5_acc": 0.5}, "wall_time_s": 0.1}


@pytest.mark.parametrize("ttl", [0, -1, 9.9, float("nan"), float("inf"), "60", True])
def test_claim_ttl_is_validated(ttl, tmp_path):
    with pytest.raises(NLBenchError, match=r"--claim-ttl must be a finite number of seconds >= 10"):
        G.Claims(tmp_path, ttl=ttl)
    with pytest.raises(NLBenchError, match=r"--claim-ttl"):
        G.stale_claims(tmp_path, ttl=ttl)
    with pytest.raises(NLBenchError, match=r"--claim-ttl"):
        G.run_grid([], tmp_path, G.LocalExecutor(1), progress=False, claim_ttl=ttl)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"{", b"\xff\xfe", b"[1, 2]", b'{"pid": 1}', b'{"pid": true, "host": "h"}'])
def test_empty_or_unparsable_claim_is_stale_at_once(content, tmp_path):
    path = G.claim_path(tmp_path, "r1")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)  # fresh mtime: a crash or a full disk, not an old claim
    assert G.stale_claims(tmp_path, ttl=3600) == [path]
    res = runner.invoke(app, ["results", "check", "--results-dir", str(tmp_path)])
    assert res.exit_code == 1 and f"{path}: stale claim" in res.stdout
    c = G.Claims(tmp_path, ttl=3600)
    assert c.acquire("r1")
    assert json.loads(path.read_text())["pid"] == os.getpid()
    c.release_all()
    assert not path.exists()


def test_claim_of_a_dead_pid_on_this_host_is_stale_at_once(tmp_path):
    path = G.claim_path(tmp_path, "r1")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "token": "t"}))
    assert G.stale_claims(tmp_path, ttl=3600) == [path]
    assert G.Claims(tmp_path, ttl=3600).acquire("r1")
    # a live holder's claim is not stale, however fresh
    live = G.Claims(tmp_path / "other", ttl=3600)
    assert live.acquire("r1") and G.stale_claims(tmp_path / "other", ttl=3600) == []


def test_claims_are_created_complete(tmp_path):
    """A claim appears filled (linked into place from a temp file), so the empty-is-stale rule never hits a live
    holder; the temp file is gone afterwards."""
    c = G.Claims(tmp_path, ttl=3600)
    assert c.acquire("r1")
    assert json.loads(G.claim_path(tmp_path, "r1").read_text())["token"] == c.held["r1"][1]
    assert sorted(p.name for p in G.claims_dir(tmp_path).iterdir()) == ["r1.claim"]
    assert not G.Claims(tmp_path, ttl=3600).acquire("r1")


def _tiny_cfg(**kw) -> RunConfig:
    return canonical_config(RunConfig(method="erm", noise="sym40", dataset="synthetic", epochs=1, meta_size=40,
                                      batch_size=64, dataset_options={"n_train": 300, "n_test": 100}, **kw))


def test_record_counts_as_done_only_if_its_content_matches_its_name(tmp_path):
    a, b = _tiny_cfg(seed=0), _tiny_cfg(seed=1)
    write_record(tmp_path, fake_record(a))
    assert find_record(tmp_path, a.run_name()) is not None
    # a's record copied onto b's file name: valid schema, but another config
    shutil.copy(record_path(tmp_path, a.run_name()), record_path(tmp_path, b.run_name()))
    assert find_record(tmp_path, b.run_name()) is None
    # the hash fields edited to match the name, but the config still re-hashes to a's
    rec = fake_record(a)
    rec.update(run_name=b.run_name(), config_hash=b.hash())
    write_record(tmp_path, rec)
    assert find_record(tmp_path, b.run_name()) is None
    # grid resume sees b as not done
    res = runner.invoke(app, ["grid", "--methods", "erm", "--noises", "sym40", "--seeds", "0,1", "--dataset",
                              "synthetic", "--data-opt", "n_train=300", "--data-opt", "n_test=100", "--meta-size",
                              "40", "--epochs", "1", "--batch-size", "64", "--results-dir", str(tmp_path),
                              "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"done {a.run_name()}" in res.stdout and f"todo {b.run_name()}" in res.stdout


def test_run_refuses_while_a_live_process_holds_the_claim(tmp_path):
    cfg = _tiny_cfg()
    holder = G.Claims(tmp_path, ttl=3600)
    assert holder.acquire(cfg.run_name())  # this test process: alive
    line = user_error(["run", *SYN, "--noise", "sym40", "--results-dir", tmp_path],
                      f"run {cfg.run_name()} is being trained by another live process")
    assert "claim" in line
    assert not list((tmp_path / "runs").glob("*.json"))
    holder.release_all()
    # released: the same command now trains and leaves no claim behind
    res = runner.invoke(app, ["run", *SYN, "--noise", "sym40", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert find_record(tmp_path, cfg.run_name()) is not None
    assert not G.claims_dir(tmp_path).exists()


def _run_isolated(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with a timeout: a hang fails the test instead of stalling the suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


def test_fifo_in_grids_or_claims_does_not_hang(tmp_path):
    (tmp_path / "grids").mkdir()
    os.mkfifo(tmp_path / "grids" / "g.json")
    G.claims_dir(tmp_path).mkdir(parents=True)
    os.mkfifo(G.claim_path(tmp_path, "r1"))
    proc = _run_isolated(f"""
        from nlbench.benchmark import grid as G
        logs, bad = G.read_grid_logs({str(tmp_path)!r})
        print(len(logs), bad[0][1])
        print(G.read_claim(G.claim_path({str(tmp_path)!r}, "r1")))
        print([p.name for p in G.stale_claims({str(tmp_path)!r})])
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["0 unreadable grid log: a FIFO, not a regular file", "{}", "['r1.claim']"]
    proc = _run_isolated(f"""
        import sys
        from nlbench.cli import main
        sys.argv = ["nlbench", "results", "check", "--results-dir", {str(tmp_path)!r}]
        main()
    """)
    assert proc.returncode == 1, proc.stderr
    assert "g.json: unreadable grid log: a FIFO" in proc.stdout and "r1.claim: stale claim" in proc.stdout


def test_grid_workers_die_with_their_driver(tmp_path):
    """kill -9 of a driver: its spawn workers get SIGKILL from the kernel (or the parent-pid watch)."""
    driver = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import multiprocessing, os, sys, time
        from concurrent.futures import ProcessPoolExecutor
        from nlbench.benchmark.grid.executors import _worker_init
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(os.getpid(),))
        futures = [pool.submit(time.sleep, 300) for _ in range(2)]
        time.sleep(0.5)
        while len(pool._processes) < 2:
            time.sleep(0.1)
        print(" ".join(str(p) for p in pool._processes), flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in driver.stdout.readline().split()]
        assert len(workers) == 2 and all(pid_alive(p) for p in workers)
        time.sleep(1.0)  # the initializers have run once the workers accept tasks
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    deadline = time.time() + 20
    while any(pid_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if pid_alive(p)]
    for p in alive:  # do not leave them behind if the test fails
        os.kill(p, signal.SIGKILL)
    assert alive == []


def test_default_model_is_declared_at_registration():
    """The dataset's registration, not config.py, says which model its runs use by default."""
    from nlbench.datasets import DEFAULT_MODELS, default_model, register_dataset

    assert RunConfig(dataset="fashion-mnist").model == DEFAULT_MODELS["fashion-mnist"] == "lenet"
    assert RunConfig(dataset="clothing1m").model == "resnet50" and default_model("cifar10") == "resnet32"
    try:
        @register_dataset("test-only-set", default_model="mlp512")
        def _loader(root, download=False):
            raise AssertionError("not loaded")

        assert RunConfig(dataset="test-only-set").model == "mlp512"
    finally:
        from nlbench.datasets import DATASETS

        DATASETS._items.pop("test-only-set", None)
        DEFAULT_MODELS.pop("test-only-set", None)
