"""Grids: expansion, named grids, the resumable driver with claims, kill -9 and concurrent drivers, and
``nlbench results check``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nlbench.benchmark import grid as G
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.records import find_record, scan_records, write_record
from nlbench.cli import app
from nlbench.errors import NLBenchError

TINY = ["--dataset", "synthetic", "--epochs", "1", "--meta-size", "40", "--data-opt", "n_train=300",
        "--data-opt", "n_test=100", "--no-progress"]
SUMMARY = re.compile(r"grid \S+: (\d+) done, (\d+) skipped, (\d+) failed, (\d+) errors"
                     r"(?:, (\d+) runs left to another process)?")


def summary_counts(text: str) -> tuple[int, int, int, int, int]:
    m = SUMMARY.search(text)
    assert m, text
    return tuple(int(g or 0) for g in m.groups())


def spec(**kw) -> G.GridSpec:
    base = dict(name="t", dataset="synthetic", methods=("erm", "oracle"), noises=("sym40",), seeds=(0, 1), epochs=1,
                meta_size=40, overrides={"dataset_options": {"n_train": 300, "n_test": 100}})
    return G.GridSpec(**{**base, **kw})


def fake_record(cfg: RunConfig, status: str = "ok") -> dict:
    acc = 0.5 + 0.01 * cfg.seed
    return {"schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": cfg.method,
            "noise": cfg.noise, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed, "status": status,
            "oracle": cfg.method == "oracle", "config": cfg.to_dict(), "env": {}, "noise_report": {},
            "history": [{"epoch": 1, "test_acc": acc, "epoch_time_s": 0.1}],
            "final": {"last_acc": acc, "best_acc": acc, "last5_acc": acc} if status == "ok" else {},
            "wall_time_s": 0.1}


class FakeExecutor:
    """Returns made-up records (no training): ``outcome(cfg)`` is "ok", "failed" or "error"."""

    def __init__(self, outcome=lambda cfg: "ok", interrupt_after: int | None = None):
        self.outcome, self.interrupt_after = outcome, interrupt_after
        self.ran: list[str] = []
        self.closed = False

    def run(self, payloads):
        for i, p in enumerate(payloads):
            if i == self.interrupt_after:
                raise KeyboardInterrupt
            cfg = RunConfig.from_dict(p["config"])
            self.ran.append(cfg.run_name())
            kind = self.outcome(cfg)
            yield p, (NLBenchError("dataset files missing") if kind == "error" else fake_record(cfg, kind))

    def close(self):
        self.closed = True


def claim_files(results: Path) -> list[str]:
    folder = G.claims_dir(results)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------------------- expansion


def test_expand_order_aliases_and_dedup():
    s = spec(methods=("fbr", "erm", "surrogate"), noises=("sym40", "PairFlip30"), seeds=(1, 0),
             extra=(G.GridRow("erm on clean", ("erm",), ("clean",), (0,)),
                    G.GridRow("again", ("erm",), ("sym40",), (1,))))
    got = [(c.seed, c.noise, c.method) for c in G.expand(s)]
    assert got == [(1, "sym40", "surrogate"), (1, "sym40", "erm"), (1, "pairflip30", "surrogate"),
                   (1, "pairflip30", "erm"), (0, "sym40", "surrogate"), (0, "sym40", "erm"),
                   (0, "pairflip30", "surrogate"), (0, "pairflip30", "erm"), (0, "clean", "erm")]
    cfg = G.expand(s)[0]
    assert (cfg.dataset, cfg.model, cfg.epochs, cfg.meta_size, cfg.dataset_options) == (
        "synthetic", "mlp", 1, 40, {"n_train": 300, "n_test": 100})
    # the hash is that of the record the run will produce (names canonical before hashing)
    assert cfg.hash() == RunConfig(method="surrogate", noise="sym40", dataset="synthetic", seed=1, epochs=1,
                                   meta_size=40, dataset_options={"n_train": 300, "n_test": 100}).hash()
    with pytest.raises(NLBenchError, match="unknown method 'ermm'. Did you mean 'erm'"):
        G.expand(spec(methods=("ermm",)))
    with pytest.raises(NLBenchError, match="per-run config keys"):
        G.expand(spec(overrides={"seed": 3}))


def test_named_grids(tmp_path):
    from nlbench.methods import list_methods

    fm = G.load_grid("fmnist-default")
    assert (fm.dataset, fm.model, fm.epochs, fm.seeds) == ("fashion-mnist", "lenet", 3, (0, 1, 2))
    assert fm.noises == ("sym20", "sym50", "sym80", "pairflip45", "flipback40", "asym40", "idn40")
    configs = G.expand(fm)
    assert len(configs) == len(list_methods()) * 7 * 3 + 3
    assert {c.method for c in configs} == set(list_methods())
    assert [(c.method, c.noise, c.seed) for c in configs[-3:]] == [("erm", "clean", s) for s in (0, 1, 2)]
    assert {(c.model, c.epochs) for c in configs} == {("lenet", 3)}
    smoke = G.expand(G.load_grid("smoke"))
    assert {c.dataset for c in smoke} == {"synthetic"} and smoke[-1].noise == "clean"
    sweep = G.expand(G.load_grid("fmnist-metasize"))
    assert len(sweep) == 6 * 3 * 3
    assert sorted({c.meta_size for c in sweep}) == [100, 250, 500, 1000, 2000, 5000]
    # the sweep's m = 1000 runs are the leaderboard's own runs (same hashes), not a second protocol
    at_1000 = {c.hash() for c in sweep if c.meta_size == 1000}
    assert len(at_1000) == 9 and at_1000 <= {c.hash() for c in configs}
    with pytest.raises(NLBenchError, match="unknown grid 'nope'; valid: .*fmnist-default, fmnist-memorize, "
                                           "fmnist-metasize, smoke"):
        G.load_grid("nope")
    bad = tmp_path / "g.toml"
    bad.write_text('[x]\ndataset = "synthetic"\nmethods = ["erm"]\nseeds = [0]\n')
    with pytest.raises(NLBenchError, match="grid 'x' lacks the key 'noises'"):  # the command line may give them
        G.expand(G.load_grid("x", bad))
    bad.write_text('[x]\ndataset = "synthetic"\nmethods = ["erm"]\nnoises = ["sym40"]\nseeds = ["a"]\n')
    with pytest.raises(NLBenchError, match="seeds must be a list of int"):
        G.load_grid("x", bad)


# -------------------------------------------------------------------------------------------- claims


def test_claim_staleness_rules():
    now, host = 1000.0, "h1"
    alive = {10}.__contains__
    info = {"pid": 10, "host": host}
    assert not G.claim_is_stale(info, now - 5, now=now, ttl=60, host=host, alive=alive)
    assert G.claim_is_stale({"pid": 11, "host": host}, now - 5, now=now, ttl=60, host=host, alive=alive)  # dead
    assert not G.claim_is_stale({"pid": 11, "host": "h2"}, now - 5, now=now, ttl=60, host=host, alive=alive)
    assert G.claim_is_stale({"pid": 11, "host": "h2"}, now - 61, now=now, ttl=60, host=host, alive=alive)  # old
    assert G.claim_is_stale(info, now - 61, now=now, ttl=60, host=host, alive=alive)  # no heartbeat: reused pid?
    # empty or garbage: a crashed or disk-full writer (claims are linked into place complete, never empty)
    assert G.claim_is_stale({}, now - 5, now=now, ttl=60, host=host, alive=alive)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_claims_acquire_take_over_and_release(tmp_path):
    c = G.Claims(tmp_path, ttl=60)
    path = G.claim_path(tmp_path, "r1")
    assert c.acquire("r1")
    mine = json.loads(path.read_text())
    assert (mine["pid"], mine["host"]) == (os.getpid(), socket.gethostname())
    other = G.Claims(tmp_path, ttl=60)
    assert not other.acquire("r1")  # held by a live process (us)
    # a claim left by a dead process on this host is taken over
    path.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "token": "x"}))
    assert other.acquire("r1")
    assert json.loads(path.read_text())["token"] == other.held["r1"][1]
    c.release("r1")  # no longer ours: must not remove the new owner's claim
    assert path.exists()
    other.release("r1")
    assert not path.exists()
    # a live-looking claim from another host is stale once its heartbeat is older than the TTL
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "y"}))
    assert not c.acquire("r1")
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert c.acquire("r1")
    c.heartbeat()
    assert time.time() - path.stat().st_mtime < 5
    c.release_all()
    assert claim_files(tmp_path) == []


# -------------------------------------------------------------------------------------------- driver


def test_run_grid_writes_skips_and_never_retries_failed(tmp_path):
    configs = G.expand(spec(seeds=(0, 1, 2)))
    outcome = {0: "ok", 1: "failed", 2: "error"}
    ex = FakeExecutor(lambda cfg: outcome[cfg.seed])
    s = G.run_grid(configs, tmp_path, ex, progress=False, name="t")
    assert (s.done, s.failed, len(s.errors), s.skipped, s.left_to_other) == (2, 2, 2, 0, 0)
    assert s.errors[0][1] == "dataset files missing" and not s.complete
    assert ex.closed and claim_files(tmp_path) == []
    assert sorted(r["seed"] for r in scan_records(tmp_path)[0]) == [0, 0, 1, 1]
    log = json.loads(G.grid_log_path(tmp_path, "t").read_text())
    assert (log["name"], log["config_hashes"], log["invocations"], log["complete"]) == (
        "t", [c.hash() for c in configs], 1, False)
    assert "wall_time_s" not in log  # not completed: no measured grid time yet

    ex2 = FakeExecutor()  # the failed runs are recorded and stay; only the errored ones run again
    s2 = G.run_grid(configs, tmp_path, ex2, progress=False, name="t")
    assert (s2.done, s2.failed, s2.skipped, s2.complete) == (2, 0, 4, True)
    assert sorted(RunConfig.from_dict(find_record(tmp_path, n)["config"]).seed for n in ex2.ran) == [2, 2]
    log2 = json.loads(G.grid_log_path(tmp_path, "t").read_text())
    assert log2["wall_time_s"] == pytest.approx(s2.wall_time_s)
    assert log2["cumulative_wall_time_s"] == pytest.approx(s.wall_time_s + s2.wall_time_s)
    assert (log2["invocations"], log2["runs_in_last_invocation"]) == (2, 2)

    s3 = G.run_grid(configs, tmp_path, FakeExecutor(), progress=False, name="t")
    assert (s3.done, s3.skipped) == (0, 6)
    assert json.loads(G.grid_log_path(tmp_path, "t").read_text())["wall_time_s"] == log2["wall_time_s"]


def test_a_record_that_breaks_the_schema_is_that_runs_error_and_the_grid_goes_on(tmp_path):
    configs = G.expand(spec(seeds=(0, 1)))

    class BadSeed0(FakeExecutor):
        def run(self, payloads):
            for p, rec in super().run(payloads):
                if not isinstance(rec, BaseException) and rec["seed"] == 0:
                    rec["history"][0]["test_acc"] = 7.0  # outside [0, 1]
                yield p, rec

    s = G.run_grid(configs, tmp_path, BadSeed0(), progress=False, name="t")
    assert s.done == 2 and len(s.errors) == 2 and not s.complete
    assert all("test_acc" in msg for _, msg in s.errors)
    assert sorted(r["seed"] for r in scan_records(tmp_path)[0]) == [1, 1] and claim_files(tmp_path) == []


def test_run_grid_interrupt_releases_claims(tmp_path):
    configs = G.expand(spec(seeds=(0, 1)))
    ex = FakeExecutor(interrupt_after=2)
    with pytest.raises(KeyboardInterrupt) as info:
        G.run_grid(configs, tmp_path, ex, progress=False, name="t")
    summary = info.value.args[0]
    assert (summary.finished, summary.total, summary.interrupted) == (2, 4, True)
    assert ex.closed and claim_files(tmp_path) == []
    assert len(scan_records(tmp_path)[0]) == 2
    log = json.loads(G.grid_log_path(tmp_path, "t").read_text())
    assert log["invocations"] == 1 and log["cumulative_wall_time_s"] > 0 and "wall_time_s" not in log


def test_run_grid_leaves_live_claims_and_cleans_stale_ones(tmp_path):
    configs = G.expand(spec())
    held = G.claim_path(tmp_path, configs[0].run_name())
    held.parent.mkdir(parents=True)
    held.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "token": "other"}))
    ex = FakeExecutor()
    s = G.run_grid(configs, tmp_path, ex, progress=False, name="t")
    assert (s.done, s.left_to_other) == (3, 1)
    assert configs[0].run_name() not in ex.ran and held.exists()
    assert "1 runs left to another process" in s.line()
    # a driver killed between writing a record and releasing its claim leaves a stale claim: cleaned on skip
    write_record(tmp_path, fake_record(configs[0]))
    held.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "token": "dead"}))
    s2 = G.run_grid(configs, tmp_path, FakeExecutor(), progress=False, name="t")
    assert (s2.done, s2.skipped) == (0, 4)
    assert claim_files(tmp_path) == []


def test_run_one_and_process_pool(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = G.expand(spec())
    rec = G.run_one(G.payload_for(configs[0], device="cpu"))
    assert (rec["status"], rec["config_hash"], rec["method"]) == ("ok", configs[0].hash(), "erm")
    assert list(tmp_path.iterdir()) == []  # run_one never writes
    with pytest.raises(NLBenchError, match="unknown dataset"):
        G.run_one(G.payload_for(RunConfig(dataset="nope", model="mlp", epochs=1), device="cpu"))
    # spawn workers: records come back through pickling and match what one process computes
    s = G.run_grid(configs[:2], tmp_path / "r", G.LocalExecutor(2), progress=False, device="cpu")
    assert (s.done, s.errors) == (2, [])
    assert find_record(tmp_path / "r", configs[0].run_name())["final"] == rec["final"]


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_grid_runs_then_skips(tmp_path):
    args = ["grid", "--methods", "erm,oracle", "--noises", "sym40", "--seeds", "0,1", *TINY,
            "--results-dir", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert summary_counts(res.stdout) == (4, 0, 0, 0, 0)
    assert len(scan_records(tmp_path)[0]) == 4
    res = CliRunner().invoke(app, args)
    assert summary_counts(res.stdout) == (0, 4, 0, 0, 0)
    res = CliRunner().invoke(app, [*args, "--dry-run"])
    assert res.stdout.count("done synthetic__") == 4


@pytest.mark.parametrize(("args", "message"), [
    (["--noises", "sym40"], "error: give --methods and --noises (comma-separated), or a grid with --grid NAME or "
                            "--config FILE"),
    (["--methods", "ermm", "--noises", "sym40"], "error: unknown method 'ermm'. Did you mean 'erm'?"),
    (["--grid", "nope"], "error: unknown grid 'nope'; valid: "),
    (["--methods", "erm", "--noises", "sym40", "--seeds", "0,x"], "error: --seeds must be comma-separated integers"),
    (["--methods", "erm", "--noises", "sym40", "--executor", "ray"], "error: --executor ray needs Ray"),
    (["--methods", "erm", "--noises", "sym40", "--workers", "0"], "error: --workers must be at least 1, got 0"),
])
def test_cli_grid_user_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    res = CliRunner().invoke(app, ["grid", *args, *TINY, "--results-dir", str(tmp_path)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), res.stderr


def grid_cmd(results: Path, seeds: str) -> list[str]:
    return [sys.executable, "-m", "nlbench.cli", "grid", "--methods", "erm,erm-meta", "--noises", "sym40",
            "--seeds", seeds, "--dataset", "synthetic", "--epochs", "2", "--meta-size", "40",
            "--data-opt", "n_train=1000", "--data-opt", "n_test=100", "--results-dir", str(results), "--no-progress"]


def check(results: Path):
    return CliRunner().invoke(app, ["results", "check", "--results-dir", str(results)])


def test_sigkill_mid_grid_resumes_exactly_once(tmp_path):
    results = tmp_path / "res"
    proc = subprocess.Popen(grid_cmd(results, "0,1,2,3"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and not list((results / "runs").glob("*.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = len(scan_records(results)[0])
    assert 1 <= before < 8, proc.stdout.read().decode()
    # The kill may catch a record mid-write (its temp file stays) and usually catches claims in flight; it can
    # also land between releasing one claim and taking the next, which leaves none. Whatever it left, check
    # reports all of it, the killed driver being gone.
    temps = list((results / "runs").glob(".*.tmp-*"))
    claims = list((results / "runs" / ".claims").glob("*.claim"))
    res = check(results)
    assert res.exit_code == (1 if temps or claims else 0), res.stdout
    assert res.stdout.count("stale claim") == len(claims) and res.stdout.count("orphaned temp") == len(temps)
    res = CliRunner().invoke(app, grid_cmd(results, "0,1,2,3")[3:])
    assert res.exit_code == 0, res.output
    done, skipped, *_ = summary_counts(res.stdout)
    assert (done, skipped) == (8 - before, before)
    records, problems = scan_records(results)
    assert problems == [] and len(records) == 8 and len({r["config_hash"] for r in records}) == 8
    assert list((results / "runs").glob(".*.tmp-*")) == []  # the resumed grid deleted any orphaned temp
    res = check(results)
    assert res.exit_code == 0 and "8 valid records, 0 problem(s)" in res.stdout, res.stdout


def test_grid_deletes_orphaned_temps_and_keeps_live_writers(tmp_path):
    results = tmp_path / "res"
    runs = results / "runs"
    runs.mkdir(parents=True)
    (results / "grids").mkdir()
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
    dead = runs / f".a.json.tmp-{dead_pid()}@{host}-x1"
    live = runs / f".b.json.tmp-{os.getpid()}@{host}-x2"  # a writer that is still writing
    other_host = runs / ".c.json.tmp-1@elsewhere-x3"  # fresh, on a host we cannot look into
    old_other = runs / ".d.json.tmp-1@elsewhere-x4"
    untagged = runs / ".e.json.tmp-abc"  # an older nlbench's temp: no writer to ask
    log_tmp = results / "grids" / f".g.json.tmp-{dead_pid()}@{host}-x5"
    for p in (dead, live, other_host, old_other, untagged, log_tmp):
        p.write_text("{")
    os.utime(old_other, (time.time() - 2 * 3600,) * 2)
    res = check(results)
    reported = {line.split(": ")[0] for line in res.stdout.splitlines() if "orphaned temp file" in line}
    assert reported == {str(p) for p in (dead, old_other, untagged, log_tmp)}, res.stdout
    res = CliRunner().invoke(app, grid_cmd(results, "0")[3:])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in runs.glob(".*.tmp-*")) == sorted([live.name, other_host.name])
    assert not log_tmp.exists()


def test_two_drivers_at_once_run_everything_exactly_once(tmp_path):
    results = tmp_path / "res"
    procs = [subprocess.Popen(grid_cmd(results, "0,1,2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    counts = [summary_counts(out) for out, _ in outs]
    assert sum(c[0] for c in counts) == 6  # every run done by exactly one driver
    for done, skipped, failed, errors, left in counts:
        assert done + skipped + left == 6 and failed == errors == 0
    records, problems = scan_records(results)
    assert problems == [] and len(records) == 6
    assert check(results).exit_code == 0


@pytest.mark.parametrize("plant", ["none", "garbage", "schema", "temp", "stale_claim", "duplicate", "grid_log"])
def test_results_check_exit_codes(tmp_path, plant):
    cfg = G.expand(spec())[0]
    write_record(tmp_path, fake_record(cfg))
    runs = tmp_path / "runs"
    expected = {
        "garbage": ("garbage.json", "unreadable"), "schema": ("schema.json", "schema: missing key"),
        "temp": (".x.json.tmp-abc", "orphaned temp file"), "stale_claim": ("r.claim", "stale claim"),
        "duplicate": ("copy.json", "duplicate config hash"), "grid_log": ("g.json", "unreadable grid log"),
    }
    if plant == "garbage":
        (runs / "garbage.json").write_text("{oops")
    elif plant == "schema":
        (runs / "schema.json").write_text('{"schema": 1}')
    elif plant == "temp":
        (runs / ".x.json.tmp-abc").write_text("{")
    elif plant == "stale_claim":
        G.claims_dir(tmp_path).mkdir()
        (G.claims_dir(tmp_path) / "r.claim").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    elif plant == "duplicate":
        (runs / "copy.json").write_text((runs / f"{cfg.run_name()}.json").read_text())
    elif plant == "grid_log":
        (tmp_path / "grids").mkdir()
        (tmp_path / "grids" / "g.json").write_text("[]")
    res = check(tmp_path)
    if plant == "none":
        assert res.exit_code == 0 and res.stdout.strip() == f"1 valid records, 0 problem(s) in {tmp_path}"
    else:
        name, what = expected[plant]
        lines = res.stdout.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 2, res.stdout
        assert name in lines[0] and what in lines[0]
    assert CliRunner().invoke(app, ["results", "check", "--results-dir", str(tmp_path / "no")]).exit_code == 2


def test_memorize_grid_expands_from_its_preset():
    """fmnist-memorize takes the preset's protocol, leaves the ablations out of "all" and runs them (and the
    normalised mwnet) in their own rows with their options."""
    from nlbench.methods import get_method, list_methods
    from nlbench.noise import noise_family

    cfgs = G.expand(G.load_grid("fmnist-memorize"))
    preset = RunConfig.from_preset("fmnist-memorize", method="erm", noise="sym50")
    erm = next(c for c in cfgs if c.method == "erm" and c.noise == "sym50" and c.seed == 0)
    assert erm.hash() == preset.hash()
    by = {}
    for c in cfgs:  # the options the grid gives (the method's defaults for the noise family left out)
        family = get_method(c.method).family_defaults.get(noise_family(c.noise), {})
        given = {k: v for k, v in c.method_options.items() if k not in family or family[k] != v}
        by.setdefault((c.method, json.dumps(given, sort_keys=True)), []).append(c)
    # the preset's tuned defaults (alpha = 3) apply to the surrogate and, so that the study ablates one
    # component only, to its three ablations, under the row's w0 = 0.5
    for ablation in ("surrogate-no-center", "surrogate-no-shift", "surrogate-no-sign"):
        assert len(by[(ablation, '{"alpha": 3.0, "w0": 0.5}')]) == 21
    assert len(by[("surrogate", '{"alpha": 3.0, "w0": 0.5}')]) == 21
    assert len(by[("surrogate", '{"alpha": 3.0}')]) == 21
    assert len(by[("meta-reweight", '{"alpha": 1.0, "w0": 1.0}')]) == 21
    assert len(by[("mwnet", '{"normalize": true}')]) == 21
    assert len(by[("erm", "{}")]) == 24  # erm: 7 noises x 3 seeds + clean x 3
    assert len(by) == len(list_methods()) + 2  # surrogate and mwnet twice: main block and their rows
    plain = set(list_methods()) - {"surrogate-no-center", "surrogate-no-shift", "surrogate-no-sign",
                                   "surrogate", "meta-reweight"}
    assert {m for m, o in by if o == "{}"} == plain


def test_preset_method_defaults_apply_per_method_and_yield_to_explicit_options():
    """A preset's method_defaults reach only their method (aliases resolved), explicit options win, and the
    options land in the config (so the hash says what ran)."""
    sur = RunConfig.from_preset("fmnist-memorize", method="fbr", noise="sym50")
    assert sur.method_options == {"alpha": 3.0}
    assert RunConfig.from_preset("fmnist-memorize", method="erm", noise="sym50").method_options == {}
    own = RunConfig.from_preset("fmnist-memorize", method="surrogate", noise="sym50", method_options={"alpha": 1.0,
                                                                                                     "w0": 0.5})
    assert own.method_options == {"alpha": 1.0, "w0": 0.5}
    assert RunConfig.from_preset("fmnist", method="surrogate", noise="sym50").method_options == {}
    spec = G.parse_grid("g", {"dataset": "fashion-mnist", "methods": ["surrogate", "erm"], "noises": ["sym50"],
                              "seeds": [0], "preset": "fmnist-memorize",
                              "method_defaults": {"erm": {}, "gce": {"q": 0.5}}})
    by = {c.method: c.method_options for c in G.expand(spec)}
    assert by == {"surrogate": {"alpha": 3.0}, "erm": {}}
    with pytest.raises(NLBenchError, match="method_defaults"):
        G.parse_grid("g", {"dataset": "fashion-mnist", "methods": ["erm"], "noises": ["sym50"], "seeds": [0],
                           "method_defaults": {"erm": 1}})


def test_run_grid_canonicalises_configs_built_by_a_script(tmp_path):
    """A script's RunConfig lacks the per-noise-family options the worker adds; the driver canonicalises first, so
    the record it gets back is of the config it claimed (not "a record of another config")."""
    from nlbench.benchmark.grid.executors import run_one

    class Inline(FakeExecutor):
        def run(self, payloads):
            for p in payloads:
                yield p, run_one(p)

    raw = RunConfig(method="elr", noise="pairflip30", dataset="synthetic", epochs=1, meta_size=0, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    assert raw.method_options == {}
    s = G.run_grid([raw], tmp_path, Inline(), progress=False, name="t", device="cpu")
    assert (s.done, s.errors) == (1, [])
    (rec,), _ = scan_records(tmp_path)
    assert rec["config"]["method_options"] == {"beta": 0.9, "lam": 1.0} and raw.method_options == {}
