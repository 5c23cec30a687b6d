"""benchmarks/gpu_check.sh refuses a machine without a GPU with one line and exit 2, before writing anything;
benchmarks/gpu_summary.py turns records into the summary page (GPU named, text escaped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
NO_GPU = "error: no CUDA GPU visible; gpu_check.sh measures the GPU path only\n"


def _run(args: list[str], path_prefix: Path | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def no_results_gpu():
    """The refusals must write nothing: results/gpu may not appear (skipped where a real check left one)."""
    if (ROOT / "results" / "gpu").exists():
        pytest.skip("results/gpu exists already (a real GPU check ran here)")
    yield
    assert not (ROOT / "results" / "gpu").exists()


def test_script_is_strict_bash():
    """Executable, bash, and stops at the first unhandled failure (set -euo pipefail before any command)."""
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and os.access(SCRIPT, os.X_OK)
    first = next(line for line in text.splitlines()[1:] if line.strip() and not line.startswith("#"))
    assert first == "set -euo pipefail"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_no_gpu_is_one_line_and_exit_2(no_results_gpu, tmp_path):
    proc = _run([], cwd=tmp_path)  # the script finds the repository itself
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, NO_GPU, "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_driver_without_a_visible_device_is_refused_too(no_results_gpu, tmp_path):
    """nvidia-smi ignores CUDA_VISIBLE_DEVICES: a driver that lists a GPU torch cannot use is still no GPU."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    proc = _run([], path_prefix=tmp_path)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, NO_GPU, "")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bad_arguments_are_one_line_and_exit_2(no_results_gpu):
    for args, needle in ([["--bogus"], "unknown argument '--bogus'"], [["--data-root"], "--data-root needs"]):
        proc = _run(args)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and needle in proc.stderr


def test_summary_names_the_gpu_and_escapes_record_text(tmp_path):
    cfg = RunConfig(method="erm", noise="sym40", dataset="synthetic", epochs=1, meta_size=20, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    rec = train(cfg, device="cpu", results_dir=tmp_path)
    bench = {"device": "cuda", "device_name": "NVIDIA Test|GPU", "batch": 100,
             "images_per_s": {"cifar-fast": 12345.6, "resnet34": 2345.0}}
    (tmp_path / "backbones-cuda.json").write_text(json.dumps(bench))
    (tmp_path / "steps.tsv").write_text("step\texit\tseconds\nbackbones\t0\t40\nmwnet-sym20\t124\t300\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), "--results-dir",
                           str(tmp_path), "--data-root", "../shared/data"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "summary.md").read_text()
    assert page.startswith("# GPU check: NVIDIA Test\\|GPU\n")  # named, and the | cannot break the heading
    assert "| `cifar-fast` | 12345.6 |" in page
    assert "**not run on a GPU**" in page and rec["run_name"] in page  # the CPU record is flagged, not hidden
    assert f"| synthetic | erm | sym40 | 0 | ok | 1/1 | {100 * rec['final']['last_acc']:.2f} |" in page
    assert "| mwnet-sym20 | 124 | 300 |" in page and "1 step(s) did not finish" in page


def test_summary_of_a_missing_folder_is_a_user_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_summary.py"), "--results-dir",
                           str(tmp_path / "absent")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def _fake_gpu(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A PATH folder with an nvidia-smi that lists a GPU and a Python wrapper that says CUDA is there, logs every
    command it is asked to run (one line each) and runs only gpu_summary.py for real; a read-only data root."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    (bin_dir / "python").write_text(
        "#!/bin/bash\n"
        f"echo \"$*\" >> '{log}'\n"
        "case \"$*\" in\n"
        "  *gpu_summary.py*) exec " + sys.executable + " \"$@\" ;;\n"
        "  *get_device_name*) echo 'GPU: Fake GPU' ;;\n"
        "esac\n"
        "exit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    root = tmp_path / "data"
    (root / "cifar10-jpeg").mkdir(parents=True)
    (root / "cifar-n").mkdir()
    (root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").write_bytes(b"not read by the fake")
    (root / "cifar-n" / "CIFAR-10_human.pt").write_bytes(b"not read by the fake")
    for d in (root / "cifar10-jpeg", root / "cifar-n", root):
        d.chmod(0o555)
    return bin_dir, log, root


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_plan_on_a_fake_gpu(tmp_path):
    bin_dir, log, root = _fake_gpu(tmp_path)
    out, stage = tmp_path / "out", tmp_path / "stage"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "GPU_CHECK_OUT": str(out), "GPU_CHECK_STAGE": str(stage), "GPU_CHECK_EPOCHS": "2"}
    env.pop("NLBENCH_DATA_ROOT", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--data-root", str(root)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = log.read_text().splitlines()
    bench = [c for c in calls if "bench_backbones.py" in c]
    assert len(bench) == 2 and bench[0].endswith("--device cuda --write --out " + str(out / "backbones-cuda.json"))
    assert "--models cifar-fast --batch 1024 --write" in bench[1]
    runs = [c for c in calls if "nlbench.cli run" in c]
    assert len(runs) == 6
    for method in ("erm", "surrogate", "mwnet"):
        for noise in ("sym20", "cifar10n-worst"):
            assert sum(f"--method {method} --noise {noise} --seed 0 --epochs 2 " in c for c in runs) == 1
    assert all("--preset cifar10-fast --dataset cifar10-jpeg" in c and f"--data-root {stage} --device cuda "
               f"--results-dir {out}" in c for c in runs)
    # nothing is written into the data root: the cache goes to the staging folder, which links to the sources
    assert sorted(p.name for p in root.rglob("*")) == ["CIFAR-10_human.pt", "cifar-n", "cifar10-jpeg",
                                                       "cifar10-jpeg.tar.gz"]
    assert (stage / "cifar10-jpeg" / "cifar10-jpeg.tar.gz").resolve() == root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    assert (stage / "cifar-n").resolve() == root / "cifar-n"
    steps = (out / "steps.tsv").read_text().splitlines()
    assert len(steps) == 9 and all(line.split("\t")[1] == "0" for line in steps[1:])
    assert (out / "summary.md").read_text().startswith("# GPU check: ")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_spent_budget_skips_steps_and_fails(tmp_path):
    bin_dir, log, root = _fake_gpu(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "GPU_CHECK_OUT": str(tmp_path / "out"), "GPU_CHECK_STAGE": str(tmp_path / "stage"),
           "GPU_CHECK_BUDGET_S": "0", "NLBENCH_DATA_ROOT": str(root)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert not any("nlbench.cli run" in c for c in log.read_text().splitlines())
    steps = (tmp_path / "out" / "steps.tsv").read_text().splitlines()
    assert len(steps) == 9 and all(line.split("\t")[1] == "skipped" for line in steps[1:])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("var", "value"), [("GPU_CHECK_EPOCHS", "0"), ("GPU_CHECK_BUDGET_S", "ten")])
def test_bad_settings_are_one_line_and_exit_2(tmp_path, var, value):
    env = {**os.environ, var: value, "GPU_CHECK_OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and var in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_python_without_torch_is_named_not_taken_for_no_gpu(tmp_path):
    bin_dir, _, root = _fake_gpu(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": "false",
           "GPU_CHECK_OUT": str(tmp_path / "out"), "NLBENCH_DATA_ROOT": str(root)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == "error: 'false' cannot import torch: set PYTHON to the interpreter that has nlbench\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_a_failing_step_does_not_stop_the_others(tmp_path):
    """Under set -e a failed run is still logged, the later steps and the summary still run, and the exit is 1."""
    bin_dir, log, root = _fake_gpu(tmp_path)
    fake = bin_dir / "python"
    fake.write_text(fake.read_text().replace("esac\n", "  *'--method erm --noise sym20'*) exit 3 ;;\nesac\n"))
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(fake),
           "GPU_CHECK_OUT": str(out), "GPU_CHECK_STAGE": str(tmp_path / "stage"), "NLBENCH_DATA_ROOT": str(root)}
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sum("nlbench.cli run" in c for c in log.read_text().splitlines()) == 6
    exits = dict(line.split("\t")[:2] for line in (out / "steps.tsv").read_text().splitlines()[1:])
    assert exits.pop("erm-sym20") == "3" and set(exits.values()) == {"0"} and len(exits) == 7
    assert (out / "summary.md").exists()
