"""The Ray executor against a real Ray head on loopback (``ray start --head`` in a subprocess).

The head binds only to 127.0.0.1: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray use the loopback address as
the node IP (it otherwise swaps 127.0.0.1 for the machine's routable IP and listens on every interface). The
teardown kills exactly the processes this session started (the head's process group and the workers its
raylet spawned), not ``ray stop --force``, which would also stop any other Ray instance of this user.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import ray_helpers  # noqa: E402  (tests/ is on sys.path under pytest)
from typer.testing import CliRunner  # noqa: E402

from nlbench.benchmark.grid import GridSpec, LocalExecutor, expand, run_grid  # noqa: E402
from nlbench.benchmark.ray_executor import RayExecutor, probe_gcs, split_host_port  # noqa: E402
from nlbench.benchmark.records import scan_records  # noqa: E402
from nlbench.cli import app  # noqa: E402
from nlbench.errors import NLBenchError  # noqa: E402

pytestmark = pytest.mark.ray

VENV_BIN = Path(sys.executable).parent
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SPEC = GridSpec(name="ray-test", dataset="synthetic", methods=("erm", "erm-meta"), noises=("sym40",), seeds=(0, 1),
                epochs=1, meta_size=40, overrides={"dataset_options": {"n_train": 300}})
CLI_GRID = ["grid", "--methods", "erm,erm-meta", "--noises", "sym40", "--seeds", "0,1", "--dataset", "synthetic",
            "--epochs", "1", "--meta-size", "40", "--data-opt", "n_train=300", "--name", "ray-test",
            "--no-progress"]
#: record fields that legitimately differ between two executions of the same config
VOLATILE = {"env", "wall_time_s", "created", "path", "_path"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pids: set[int]) -> set[int]:
    """Processes whose parent is in ``pids`` (Ray workers get their own process group; their parent is the
    raylet)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in pids:
                out.add(int(entry.name))
    return out


def _group(pgid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    out.add(int(entry.name))
            except OSError:
                continue
    return out


@pytest.fixture(scope="session")
def ray_head():
    """``127.0.0.1:PORT`` of a 2-CPU Ray head started for this session, stopped at its end."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="nlray")  # short: Ray's unix socket paths must stay under 108 bytes
    # The head requires a token of its own (as `ray start` does whenever one is available), so the tests neither
    # depend on ~/.ray/auth_token nor skip the driver's token handling.
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_TOKEN_PATH": str(token)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
           "--temp-dir", temp_dir]
    # A session of its own: every process `ray start` spawns stays in this process group.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    pgid = proc.pid
    try:
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out}")
        with pytest.MonkeyPatch.context() as mp:  # the driver (this process) must keep 127.0.0.1 too
            for key, value in RAY_ENV.items():
                mp.setenv(key, value)
            mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
            for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # restored (unset) at teardown
                mp.delenv(key, raising=False)
            # read from the environment when ray was imported, i.e. before this fixture ran
            mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
            yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        group = _group(pgid)
        for pid in group | _children(group):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def comparable(records: list[dict]) -> dict[str, dict]:
    """Records by run name without the fields that depend on the machine and the clock."""
    out = {}
    for rec in records:
        rec = {k: v for k, v in rec.items() if k not in VOLATILE}
        rec["history"] = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in rec["history"]]
        out[rec["run_name"]] = rec
    return out


@pytest.fixture(scope="module")
def local_records(tmp_path_factory) -> dict[str, dict]:
    """The grid run in-process with the local executor and 1 torch thread (as each Ray task runs with
    ``--cpus-per-run 1``), read back from disk."""
    import torch

    results = tmp_path_factory.mktemp("local")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = run_grid(expand(SPEC), results, LocalExecutor(1), progress=False, name="ray-test")
    finally:
        torch.set_num_threads(threads)
    assert summary.done == 4
    records, problems = scan_records(results)
    assert problems == []
    return comparable(records)


def read_back(results: Path) -> dict[str, dict]:
    records, problems = scan_records(results)
    assert problems == []
    assert len({r["config_hash"] for r in records}) == len(records)
    return comparable(records)


# ------------------------------------------------------------------------------------------- no cluster


@pytest.mark.parametrize("address, expected", [
    ("10.0.0.1:6379", ("10.0.0.1", 6379)), ("head", ("head", 6379)), ("ray://head:10001", ("head", 10001)),
    ("[::1]:7000", ("::1", 7000)),
])
def test_split_host_port(address, expected):
    assert split_host_port(address) == expected


@pytest.mark.parametrize("address", ["head:abc", ":6379", "head:0", "head:70000"])
def test_split_host_port_rejects(address):
    with pytest.raises(NLBenchError, match="use HOST:PORT"):
        split_host_port(address)


def test_probe_closed_port_fails_at_once():
    port = free_port()  # bound and released: nothing listens there
    # the refusal itself is the answer, not the timeout running out (a long timeout would be reported as such)
    with pytest.raises(NLBenchError, match=rf"cannot reach the Ray head at 127\.0\.0\.1:{port} \(Connection refused\)"):
        probe_gcs("127.0.0.1", port, timeout=120)


def test_probe_rejects_a_non_grpc_server():
    # A port owned by another service (here: one that closes every connection) is not taken for the GCS.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)

        def serve():
            conn, _ = srv.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with pytest.raises(NLBenchError, match="answers but is not a Ray head"):
            probe_gcs("127.0.0.1", srv.getsockname()[1], timeout=5)
        t.join(5)


def test_bad_resources_are_user_errors():
    with pytest.raises(NLBenchError, match="--cpus-per-run must be positive"):
        RayExecutor(address="127.0.0.1:1", cpus_per_run=0)
    with pytest.raises(NLBenchError, match="--gpus-per-run must be non-negative"):
        RayExecutor(address="127.0.0.1:1", gpus_per_run=-1)


# ----------------------------------------------------------------------------------------- real cluster


def test_probe_accepts_the_gcs(ray_head):
    probe_gcs(*split_host_port(ray_head), timeout=5)


def test_payload_threads_and_device(ray_head):
    ex = RayExecutor(address=ray_head, cpus_per_run=2)
    try:
        assert ex.prepare({"config": {}, "device": "auto", "threads": None}) == \
            {"config": {}, "device": "cpu", "threads": 2}
        assert ex.prepare({"config": {}, "device": "cuda", "threads": None})["device"] == "cuda"
    finally:
        ex.close()
    assert not ray.is_initialized()


def test_run_that_fits_no_node_is_refused(ray_head):
    with pytest.raises(NLBenchError, match=r"no Ray node can hold one run with 3 CPUs and 0 GPUs \(largest node: "
                                           r"2 CPUs, 0 GPUs\)"):
        RayExecutor(address=ray_head, cpus_per_run=3)
    assert not ray.is_initialized()  # the refused executor disconnected


def test_grid_on_ray_equals_local(ray_head, local_records, tmp_path):
    summary = run_grid(expand(SPEC), tmp_path, RayExecutor(address=ray_head), progress=False, name="ray-test")
    assert (summary.done, summary.skipped, summary.failed, summary.errors) == (4, 0, 0, [])
    assert not ray.is_initialized()  # run_grid closed the executor, which disconnected
    got = read_back(tmp_path)
    assert sorted(got) == sorted(local_records)
    for name, rec in got.items():
        assert rec["history"] == local_records[name]["history"], name
        assert rec["final"] == local_records[name]["final"], name
        assert rec == local_records[name], name
    assert {json.loads((tmp_path / "grids" / "ray-test.json").read_text())["n_runs"]} == {4}

    # A second invocation finds every record and submits nothing.
    again = run_grid(expand(SPEC), tmp_path, RayExecutor(address=ray_head), progress=False, name="ray-test")
    assert (again.done, again.skipped, again.errors) == (0, 4, [])


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="portable mode needs an x86-64 CPU with AVX2")
def test_portable_driver_runs_its_ray_tasks_in_portable_numerics(ray_head, tmp_path, monkeypatch):
    """NLBENCH_PORTABLE in the driver (as `grid --portable` sets it) reaches each task through its runtime
    environment: Ray starts the run in a worker whose kernels are pinned before torch loads."""
    from nlbench import portable

    for key in (portable.ENV_FLAG, *portable.PINS):
        monkeypatch.setenv(key, "")  # restored (unset) at teardown
        monkeypatch.delenv(key)
    one = GridSpec(name="portable", dataset="synthetic", methods=("erm",), noises=("sym40",), seeds=(0,), epochs=1,
                   meta_size=40, overrides={"dataset_options": {"n_train": 300}})
    monkeypatch.setenv(portable.ENV_FLAG, "1")  # the driver itself never computes: no pins needed here
    summary = run_grid(expand(one), tmp_path, RayExecutor(address=ray_head), progress=False, name="portable")
    assert (summary.done, summary.errors) == (1, [])
    (rec,), _ = scan_records(tmp_path)
    assert rec["env"]["portable"] is True and rec["env"]["cpu_capability"] == "AVX2"
    assert rec["env"]["numerics_pins"]["MKL_CBWR"] == "COMPATIBLE"


def test_worker_killed_mid_run_is_retried(ray_head, local_records, tmp_path):
    marker = tmp_path / "died"
    task = functools.partial(ray_helpers.die_once_then_run, str(marker))
    ray.cloudpickle.register_pickle_by_value(ray_helpers)  # workers need not import tests/
    try:
        summary = run_grid(expand(SPEC), tmp_path / "results", RayExecutor(address=ray_head, task=task),
                           progress=False, name="ray-test")
    finally:
        ray.cloudpickle.unregister_pickle_by_value(ray_helpers)
    assert marker.read_text().isdigit()  # a worker wrote its pid and killed itself in epoch 1
    assert (summary.done, summary.failed, summary.errors) == (4, 0, [])
    runs = sorted(p.name for p in (tmp_path / "results" / "runs").iterdir() if p.suffix == ".json")
    assert runs == sorted(f"{name}.json" for name in local_records)  # every record exactly once
    assert read_back(tmp_path / "results") == local_records  # the retried run's result is unchanged


def test_worker_killed_without_retries_is_reported(ray_head, local_records, tmp_path):
    # The same crash with retries off: proves the crash happens, and that a run lost for good is an error
    # (no record, the grid goes on), never a half-written record.
    task = functools.partial(ray_helpers.die_once_then_run, str(tmp_path / "died"))
    ray.cloudpickle.register_pickle_by_value(ray_helpers)
    try:
        summary = run_grid(expand(SPEC), tmp_path / "results", RayExecutor(address=ray_head, task=task, max_retries=0),
                           progress=False, name="ray-test")
    finally:
        ray.cloudpickle.unregister_pickle_by_value(ray_helpers)
    assert (summary.done, summary.failed, len(summary.errors)) == (3, 0, 1)
    lost, message = summary.errors[0]
    assert message.startswith("WorkerCrashedError: ")
    got = read_back(tmp_path / "results")
    assert sorted(got) == sorted(set(local_records) - {lost})
    assert all(got[name] == local_records[name] for name in got)


def test_user_error_in_a_task_comes_back_as_its_message(ray_head, tmp_path):
    # The data are loaded on the worker, so a dataset that is too large for the loader's budget fails there (its
    # options pass the type and range checks the driver makes); the driver gets the message, not Ray's remote
    # traceback, and writes no record.
    bad = GridSpec(name="bad", dataset="synthetic", methods=("erm",), noises=("sym40",), seeds=(0,), epochs=1,
                   meta_size=40, overrides={"dataset_options": {"n_train": 1_000_000, "dim": 100_000}})
    summary = run_grid(expand(bad), tmp_path, RayExecutor(address=ray_head), progress=False, name="bad")
    assert len(summary.errors) == 1
    name, message = summary.errors[0]
    assert name == expand(bad)[0].run_name()
    assert message.startswith("synthetic: (n_train + n_test) x dim = 100,050,000,000 values, over the ")
    assert summary.done == 0
    assert scan_records(tmp_path) == ([], [])


def test_out_of_range_dataset_option_is_refused_before_any_task():
    bad = GridSpec(name="bad", dataset="synthetic", methods=("erm",), noises=("sym40",), seeds=(0,), epochs=1,
                   meta_size=40, overrides={"dataset_options": {"n_train": 0}})
    with pytest.raises(NLBenchError, match=r"dataset 'synthetic': option n_train must be in \[1, 1e\+06\], got 0"):
        expand(bad)


def test_cli_grid_on_ray_then_skips(ray_head, local_records, tmp_path):
    runner = CliRunner()
    args = [*CLI_GRID, "--results-dir", str(tmp_path), "--executor", "ray", "--ray-address", ray_head]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "grid ray-test: 4 done, 0 skipped, 0 failed, 0 errors" in first.output
    assert read_back(tmp_path) == local_records
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()}

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "grid ray-test: 0 done, 4 skipped, 0 failed, 0 errors" in second.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").iterdir()} == mtimes


def test_cli_wrong_address_fails_fast(ray_head, tmp_path):
    port = free_port()  # nothing listens there; the real head is up, so only the address is wrong
    env = {**os.environ, **RAY_ENV}
    proc = subprocess.run([str(VENV_BIN / "nlbench"), *CLI_GRID, "--results-dir", str(tmp_path), "--executor", "ray",
                           "--ray-address", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: cannot reach the Ray head at 127.0.0.1:{port} (Connection refused); "
                                        "check --ray-address and that `ray start --head` runs there"]
    assert proc.stdout == ""  # failed on the refusal ("Connection refused"), not after waiting for a cluster
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing claimed


#: A driver that submits one never-ending run and waits for it (killed by the test below).
HANGING_DRIVER = """
import functools, sys
import ray, ray_helpers
from nlbench.benchmark.ray_executor import RayExecutor

address, pidfile = sys.argv[1:]
ray.cloudpickle.register_pickle_by_value(ray_helpers)
executor = RayExecutor(address=address, task=functools.partial(ray_helpers.record_pid_then_hang, pidfile))
for _ in executor.run([{"config": {}, "device": "cpu"}]):
    pass
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has finished; only its parent's reaping is left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_driver(ray_head, tmp_path):
    # A run whose driver is gone would train for nobody (only the driver writes records): Ray must end it.
    pidfile = tmp_path / "worker.pid"
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(Path(__file__).parent)}
    driver = subprocess.Popen([sys.executable, "-c", HANGING_DRIVER, ray_head, str(pidfile)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not pidfile.exists():
            assert driver.poll() is None, driver.communicate()[0]
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.2)
        worker = int(pidfile.read_text())
        assert _alive(worker)
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 60
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(worker), "the worker still runs its task 60 s after its driver was SIGKILLed"


def test_cli_wrong_token_is_one_line(ray_head, tmp_path):
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_TOKEN": "0" * 64}  # takes precedence over RAY_AUTH_TOKEN_PATH
    proc = subprocess.run([str(VENV_BIN / "nlbench"), *CLI_GRID, "--results-dir", str(tmp_path), "--executor", "ray",
                           "--ray-address", ray_head], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.splitlines()[-1]  # Ray's own retry warnings come first
    assert last.startswith(f"error: cannot connect to Ray at {ray_head}: "), proc.stderr
    assert last.endswith("if the cluster uses token authentication, give its token in RAY_AUTH_TOKEN or "
                         "RAY_AUTH_TOKEN_PATH"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


USER_GRID_FILE = """\
[mine-ray]
dataset = "synthetic"
dataset_options = { n_train = 300, n_test = 100 }
methods = ["erm", "surrogate"]
noises = ["sym40"]
seeds = [0]
epochs = 1
meta_size = 40
val_size = 20
schedule = "constant"
weight_decay = 0.0

[mine-ray.sweep]
method_options = { alpha = [0.3, 3.0] }

[[mine-ray.extra]]
name = "erm reference"
methods = ["erm"]
noises = ["sym40"]
"""


def test_user_grid_file_on_ray(ray_head, tmp_path):
    """A grid file of the user's own runs on Ray as it runs locally: the records of the runs `--dry-run` lists
    (same config hashes), with a method option sweep, and a rerun skips them all."""
    from nlbench.benchmark.records import scan_records

    path = tmp_path / "mine.toml"
    path.write_text(USER_GRID_FILE)
    results = tmp_path / "results"
    runner = CliRunner()
    # erm takes no alpha: the main block lists only surrogate, the row runs erm
    base = ["grid", "--config", str(path), "--methods", "surrogate", "--results-dir", str(results)]
    listed = runner.invoke(app, [*base, "--dry-run", "--json"])
    assert listed.exit_code == 0, listed.output
    hashes = {r["config_hash"] for r in json.loads(listed.stdout)["runs"]}
    assert len(hashes) == 3
    args = [*base, "--executor", "ray", "--ray-address", ray_head, "--no-progress"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "3 done, 0 skipped, 0 failed, 0 errors" in first.stdout
    records, problems = scan_records(results)
    assert problems == [] and {r["config_hash"] for r in records} == hashes
    assert sorted(r["config"]["method_options"].get("alpha", 0) for r in records) == [0, 0.3, 3.0]
    assert {r["config"]["val_size"] for r in records} == {20}
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "0 done, 3 skipped" in second.stdout, second.output
