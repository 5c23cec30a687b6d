"""Mid-run checkpoints: an interrupted run continues from its last epoch with the history an uninterrupted run
has, bit for bit on the CPU, for every registered method; checkpoints are removed with the record, survive
hostile files, and `results check` reports orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from nlbench.benchmark import checkpoint as ckpt
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.methods import list_methods

# dividemix needs a MixMatch epoch after its warm-up, so 4 epochs cover the warm-up, the GMM and MixMatch
EPOCHS = 4


def tiny(method: str, **kw) -> RunConfig:
    base = dict(noise="sym40", dataset="synthetic", epochs=EPOCHS, meta_size=40, val_size=40, batch_size=64,
                dataset_options={"n_train": 400, "n_test": 100}, schedule="step", milestones=(3,))
    return RunConfig(method=method, **{**base, **kw})


def strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


class Stop(Exception):
    pass


def interrupt_after(monkeypatch, epoch: int) -> None:
    """Make the run stop right after writing the checkpoint of ``epoch``, as a kill at that moment would."""
    real = ckpt.save

    def save(path, state):
        real(path, state)
        if len(state["history"]) == epoch:
            raise Stop

    monkeypatch.setattr(ckpt, "save", save)


@pytest.mark.parametrize("name", list_methods())
@pytest.mark.parametrize("stop_after", [1, 3])
def test_interrupted_run_resumes_bit_identically(name, stop_after, tmp_path, monkeypatch):
    cfg = tiny(name)
    whole = train(cfg, device="cpu", results_dir=tmp_path / "whole", checkpoint_every=0)
    interrupt_after(monkeypatch, stop_after)
    with pytest.raises(Stop):
        train(cfg, device="cpu", results_dir=tmp_path / "cut", checkpoint_every=0)
    saved = ckpt.checkpoint_path(ckpt.checkpoints_dir(tmp_path / "cut"), cfg.run_name())
    assert saved.is_file() and not (tmp_path / "cut" / "runs" / f"{cfg.run_name()}.json").exists()
    monkeypatch.undo()
    resumed = train(cfg, device="cpu", results_dir=tmp_path / "cut", checkpoint_every=0)
    assert resumed["resumed_from_epoch"] == stop_after + 1
    assert strip(resumed["history"]) == strip(whole["history"])
    assert resumed["final"] == whole["final"] and resumed["status"] == whole["status"]
    assert not saved.exists()  # removed once the record is written
    assert not list((tmp_path / "whole" / "checkpoints").glob("*"))


def test_checkpoint_every_none_writes_nothing_and_force_ignores_one(tmp_path, monkeypatch):
    cfg = tiny("erm")
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Stop):
        train(cfg, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    monkeypatch.undo()
    fresh = train(cfg, device="cpu", results_dir=tmp_path, resume=False, checkpoint_every=None)
    assert "resumed_from_epoch" not in fresh and len(fresh["history"]) == EPOCHS
    assert not list((tmp_path / "checkpoints").glob("*.pt"))  # the finished record's write removes it


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"\x80\x04K\x01."])
def test_a_bad_checkpoint_is_ignored_with_a_warning(content, tmp_path, capsys):
    cfg = tiny("erm")
    path = ckpt.checkpoint_path(ckpt.checkpoints_dir(tmp_path), cfg.run_name())
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    rec = train(cfg, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    assert "resumed_from_epoch" not in rec and len(rec["history"]) == EPOCHS
    assert "ignoring checkpoint" in capsys.readouterr().err


def test_a_checkpoint_that_runs_code_is_refused(tmp_path, capsys):
    """torch.load(weights_only=True): a pickle that calls os.system is never executed."""

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    cfg = tiny("erm")
    path = ckpt.checkpoint_path(ckpt.checkpoints_dir(tmp_path), cfg.run_name())
    path.parent.mkdir(parents=True)
    torch.save({"format": ckpt.FORMAT, "config_hash": cfg.hash(), "model": Evil()}, path)
    rec = train(cfg, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    assert not (tmp_path / "pwned").exists() and "resumed_from_epoch" not in rec
    assert "ignoring checkpoint" in capsys.readouterr().err


def test_a_foreign_or_misfitting_checkpoint_starts_over(tmp_path, monkeypatch, capsys):
    """Another config's checkpoint under this run's name is ignored; one of the right config whose contents do
    not fit (another model's weights) is dropped and the run starts from epoch 1."""
    cfg = tiny("erm")
    other = tiny("erm", model="mlp512")
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Stop):
        train(other, device="cpu", results_dir=tmp_path / "o", checkpoint_every=0)
    monkeypatch.undo()
    src = ckpt.checkpoint_path(ckpt.checkpoints_dir(tmp_path / "o"), other.run_name())
    dst = ckpt.checkpoint_path(ckpt.checkpoints_dir(tmp_path), cfg.run_name())
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes())
    rec = train(cfg, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    assert "resumed_from_epoch" not in rec and "of another config" in capsys.readouterr().err
    state = torch.load(src, weights_only=True)
    state["config_hash"] = f"{cfg.hash()}:v1"  # the run's identity: its config hash and its method's version
    torch.save(state, dst)
    (tmp_path / "runs" / f"{cfg.run_name()}.json").unlink()
    rec = train(cfg, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    assert "resumed_from_epoch" not in rec and len(rec["history"]) == EPOCHS
    assert "does not fit this run" in capsys.readouterr().err


def test_unsupported_method_state_is_named():
    class Holder:
        def __init__(self):
            self.ok = torch.zeros(2)
            self.bad = object()

    with pytest.raises(ckpt.UnsupportedState, match="Holder.bad"):
        ckpt.capture(Holder())


def test_killed_cli_run_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL a real `nlbench run` after its first checkpoint; the same command then finishes from it with
    the history of an uninterrupted run."""
    args = [sys.executable, "-m", "nlbench.cli", "run", "--dataset", "synthetic", "--data-opt", "n_train=3000",
            "--data-opt", "n_test=200", "--meta-size", "40", "--epochs", "40", "--batch-size", "32",
            "--noise", "sym40", "--device", "cpu", "--no-progress", "--checkpoint-every", "0", "--json"]
    whole = json.loads(subprocess.run(args + ["--results-dir", str(tmp_path / "whole")], capture_output=True,
                                      text=True, check=True).stdout)
    folder = tmp_path / "cut" / "checkpoints"
    proc = subprocess.Popen(args + ["--results-dir", str(tmp_path / "cut")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (folder.is_dir() and any(folder.glob("*.pt"))) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(folder.glob("*.pt")), "no checkpoint appeared before the run ended"
    resumed = json.loads(subprocess.run(args + ["--results-dir", str(tmp_path / "cut")], capture_output=True,
                                        text=True, check=True).stdout)
    assert resumed["resumed_from_epoch"] >= 2
    assert strip(resumed["history"]) == strip(whole["history"])
    assert not any(folder.glob("*.pt"))


def test_results_check_reports_orphaned_checkpoints(tmp_path, monkeypatch):
    """A checkpoint of a run that has its record is orphaned (exit 1), so is a stray file; a checkpoint of an
    unfinished run is resumable and no problem."""
    from typer.testing import CliRunner

    from nlbench.cli import app

    done, cut = tiny("erm"), tiny("gce")
    train(done, device="cpu", results_dir=tmp_path, checkpoint_every=None)
    interrupt_after(monkeypatch, 1)
    with pytest.raises(Stop):
        train(cut, device="cpu", results_dir=tmp_path, checkpoint_every=0)
    monkeypatch.undo()
    check = lambda: CliRunner().invoke(app, ["results", "check", "--results-dir", str(tmp_path)])  # noqa: E731
    result = check()
    assert result.exit_code == 0 and "1 resumable checkpoint(s), 0 problem(s)" in result.stdout
    folder = ckpt.checkpoints_dir(tmp_path)
    (folder / f"{done.run_name()}.pt").write_bytes((folder / f"{cut.run_name()}.pt").read_bytes())
    (folder / "notes.txt").write_text("x")
    result = check()
    assert result.exit_code == 1
    assert f"{done.run_name()}.pt: orphaned checkpoint (its run has a record)" in result.stdout
    assert "notes.txt: not a checkpoint" in result.stdout and "2 problem(s)" in result.stdout
