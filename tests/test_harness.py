"""The training loop end to end on tiny synthetic data: record contents, atomic writes, resume, determinism, LR
schedules, divergence and the record schema."""

from __future__ import annotations

import copy
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nlbench
from nlbench.benchmark import harness, records
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import lr_at, train
from nlbench.benchmark.records import atomic_write_text, load_record, scan_records, validate_record, write_record
from nlbench.errors import NLBenchError
from nlbench.methods import Method, StepOutput

EPOCHS = 3


def tiny_config(**kw) -> RunConfig:
    base = dict(method="erm", noise="sym40", dataset="synthetic", epochs=EPOCHS, batch_size=64, meta_size=40,
                lr=0.05, dataset_options={"n_train": 400, "n_test": 100})
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def record(run_dir):
    return train(tiny_config(), device="cpu", results_dir=run_dir)


def test_record_keys_and_values(record):
    assert {"method", "noise", "dataset", "seed", "status", "config", "env", "noise_report", "history", "final",
            "wall_time_s", "config_hash", "run_name", "sizes", "model", "path"} <= set(record)
    assert (record["method"], record["noise"], record["dataset"], record["model"]) == ("erm", "sym40", "synthetic",
                                                                                      "mlp")
    assert (record["seed"], record["noise_seed"], record["status"]) == (0, 0, "ok")
    assert record["config"] == tiny_config().to_dict()
    env = record["env"]
    assert env["nlbench"] == nlbench.__version__ and env["torch"] == torch.__version__ and env["device"] == "cpu"
    assert env["git_sha"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    # 400 train, 10 meta per class; 90 per class in the pool, 36 flipped each
    assert record["sizes"] == {"pool": 360, "meta": 40, "val": 0, "test": 100, "train": 360}
    assert record["noise_report"]["realised_rate"] == 0.4
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3]
    for h in record["history"]:
        assert 0 <= h["test_acc"] <= 1 and h["epoch_time_s"] > 0 and math.isfinite(h["train_loss"])
        assert math.isnan(h["val_acc"])  # no validation split
    accs = [h["test_acc"] for h in record["history"]]
    f = record["final"]
    assert f["last_acc"] == accs[-1] and f["best_acc"] == max(accs) and f["epochs_done"] == EPOCHS
    assert f["last5_acc"] == pytest.approx(sum(accs) / 3, abs=1e-15)
    assert accs[f["best_epoch"] - 1] == f["best_acc"]
    assert f["last_acc"] > 0.5  # 4 well-separated Gaussians: learnt something despite 40% noise
    assert record["wall_time_s"] >= sum(h["epoch_time_s"] for h in record["history"])
    assert validate_record(record) == []


def test_atomic_write(record, run_dir):
    cfg = tiny_config()
    files = sorted(p.name for p in (run_dir / "runs").iterdir())
    assert files == [f"synthetic__erm__sym40__s0__{cfg.hash()}.json"]  # no temp files left
    assert record["path"] == str(run_dir / "runs" / files[0])
    on_disk = load_record(record["path"])
    assert on_disk["config_hash"] == cfg.hash() and on_disk["final"] == record["final"]
    assert on_disk["history"][0]["val_acc"] is None  # NaN stored as JSON null


def refuse_to_train(*args, **kwargs):
    """Stands in for ``create_model`` where a test proves that no training starts."""
    raise RuntimeError("trained")


def test_resume_returns_the_stored_record_without_training(record, run_dir, monkeypatch):
    monkeypatch.setattr(harness, "create_model", refuse_to_train)
    again = train(tiny_config(), device="cpu", results_dir=run_dir)
    assert again["resumed"] is True
    assert again["final"] == record["final"] and again["created"] == record["created"]
    assert again["path"] == record["path"]
    with pytest.raises(RuntimeError, match="trained"):
        train(tiny_config(), device="cpu", results_dir=run_dir, resume=False)
    with pytest.raises(RuntimeError, match="trained"):  # a different config is a different run
        train(tiny_config(seed=1), device="cpu", results_dir=run_dir)


def test_resume_ignores_a_broken_record(record, run_dir, monkeypatch, tmp_path):
    path = tmp_path / "runs" / f"{tiny_config().run_name()}.json"
    path.parent.mkdir()
    path.write_text('{"schema": 1')
    monkeypatch.setattr(harness, "create_model", refuse_to_train)
    with pytest.raises(RuntimeError, match="trained"):
        train(tiny_config(), device="cpu", results_dir=tmp_path)


def test_same_config_twice_is_identical(record):
    again = train(tiny_config(), device="cpu")
    keys = ("test_acc", "train_loss", "lr")
    assert [[h[k] for k in keys] for h in again["history"]] == [[h[k] for k in keys] for h in record["history"]]
    assert again["final"] == record["final"]
    assert "path" not in again


def test_training_seed_changes_training(record):
    other = train(tiny_config(seed=1, noise_seed=0), device="cpu")
    assert other["noise_report"] == record["noise_report"]  # same noise ...
    assert [h["train_loss"] for h in other["history"]] != [h["train_loss"] for h in record["history"]]  # ... not run


def test_cosine_schedule():
    cfg = tiny_config(lr=0.2, epochs=2, schedule="cosine")
    assert [lr_at(cfg, s, 5) for s in (0, 5)] == [0.2, pytest.approx(0.1)]
    assert lr_at(cfg, 10, 5) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cfg, 2, 5) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.2)))


def test_step_schedule():
    cfg = tiny_config(lr=1.0, epochs=6, schedule="step", milestones=(2, 4), gamma=0.1)
    assert [lr_at(cfg, s, 3) for s in (0, 5, 6, 11, 12, 17)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_at(tiny_config(lr=0.3, schedule="constant"), 99, 3) == 0.3


def test_history_records_the_schedule():
    rec = train(tiny_config(epochs=2, schedule="step", milestones=(1,), gamma=0.5, lr=0.02), device="cpu")
    assert [h["lr"] for h in rec["history"]] == [0.02, 0.01]


class NaNAtEpoch(Method):
    """Cross-entropy until ``epoch``, then NaN."""

    reweights = True

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def step(self, batch, model):
        loss = F.cross_entropy(model(batch.x), batch.y)
        if batch.epoch >= self.epoch:
            loss = loss * float("nan")
        return StepOutput(loss, torch.ones(len(batch.y)))


def test_nan_loss_fails_the_run_with_reason_and_epoch(monkeypatch, tmp_path):
    # Swapped in rather than registered, so other tests that iterate over every method never see it.
    monkeypatch.setattr(harness, "create_method", lambda name, **opts: NaNAtEpoch(2))
    rec = train(tiny_config(), device="cpu", results_dir=tmp_path)
    assert rec["status"] == "failed"
    assert rec["error"] == {"reason": "non-finite training loss (nan) in epoch 2", "epoch": 2}
    assert [h["epoch"] for h in rec["history"]] == [1]
    assert rec["final"]["epochs_done"] == 1 and rec["final"]["last_acc"] == rec["history"][0]["test_acc"]
    h = rec["history"][0]  # weight telemetry of a reweighting method: all weights 1
    assert (h["w_clean_mean"], h["w_noisy_mean"], h["w_seen"]) == (1.0, 1.0, 360)
    assert validate_record(load_record(rec["path"])) == []


def test_huge_lr_diverges_in_the_first_epoch():
    # the largest --lr (10) on far-apart classes (inputs of norm ~1000): the loss overflows
    rec = train(tiny_config(lr=10, schedule="constant", dataset_options={"n_train": 400, "n_test": 100,
                                                                        "separation": 1000}), device="cpu")
    assert rec["status"] == "failed" and rec["error"]["epoch"] == 1
    assert rec["error"]["reason"].startswith("non-finite training loss")
    assert rec["history"] == [] and rec["final"] == {}
    assert validate_record(rec) == []  # a failed run needs no final accuracies


def test_validate_record_on_broken_records(record):
    good = json.loads(json.dumps(record, default=str))
    assert validate_record(good) == []
    assert validate_record([1, 2]) == ["record is not a JSON object"]

    def broken(mutate) -> list[str]:
        rec = copy.deepcopy(good)
        mutate(rec)
        return validate_record(rec)

    assert broken(lambda r: r.pop("final")) == ["missing key 'final'"]
    assert broken(lambda r: r.pop("env")) == ["missing key 'env'"]
    assert broken(lambda r: r.update(seed="0")) == ["key 'seed' has type str"]
    assert broken(lambda r: r.update(wall_time_s=None)) == ["key 'wall_time_s' has type NoneType"]
    assert broken(lambda r: r.update(status="done")) == ["status 'done' is not one of ('ok', 'failed')"]
    assert broken(lambda r: r["history"][1].pop("test_acc")) == ["history[1] lacks epoch/test_acc/epoch_time_s"]
    assert broken(lambda r: r["final"].pop("last5_acc")) == ["final lacks last_acc/best_acc/last5_acc"]


def test_scan_records_reports_problems(record, tmp_path):
    good = json.loads(json.dumps(record, default=str))
    write_record(tmp_path, good)
    runs = tmp_path / "runs"
    dup = dict(good, run_name=good["run_name"] + "_copy")  # sorts after the original
    write_record(tmp_path, dup)
    (runs / "bad.json").write_text("{not json")
    (runs / ".x.json.tmp-123").write_text("{")
    recs, problems = scan_records(tmp_path)
    assert [r["run_name"] for r in recs] == [good["run_name"]]
    found = {p.path.name: p.problem for p in problems}
    assert set(found) == {"bad.json", ".x.json.tmp-123", dup["run_name"] + ".json"}
    assert found["bad.json"].startswith("unreadable: ") and found[".x.json.tmp-123"] == "orphaned temp file"
    assert found[dup["run_name"] + ".json"].startswith(f"duplicate config hash {good['config_hash']}")


def test_unwritable_results_dir_fails_before_training(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(harness, "create_model", refuse_to_train)
    with pytest.raises(NLBenchError, match=rf"^cannot write to {blocker / 'results' / 'runs'}: Not a directory$"):
        train(tiny_config(), device="cpu", results_dir=blocker / "results")


def test_failed_write_leaves_neither_record_nor_temp_file(tmp_path, monkeypatch):
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    target = tmp_path / "runs" / "r.json"
    atomic_write_text(target, "old\n")
    monkeypatch.setattr(records.os, "replace", full_disk)
    with pytest.raises(NLBenchError, match=rf"^cannot write {target}: No space left on device$"):
        atomic_write_text(target, "new\n")
    assert [p.name for p in target.parent.iterdir()] == ["r.json"] and target.read_text() == "old\n"


# ------------------------------------------------------------------------------------------------ stages


class TwoStages(Method):
    """Cross-entropy in two stages; logs the hooks' order, every step's learning rate and the optimiser."""

    def __init__(self, keep: bool = False, nan_in: int | None = None):
        super().__init__()
        self.keep_optimizer_state = keep
        self.nan_in = nan_in
        self.calls: list[tuple] = []
        self.lrs: list[float] = []

    def stages(self) -> int:
        return 2

    def on_stage_start(self, stage, model):
        self.calls.append(("stage", stage))

    def on_epoch_start(self, epoch, model):
        self.calls.append(("epoch", epoch))

    def step(self, batch, model):
        self.lrs.append(batch.lr)
        loss = F.cross_entropy(model(batch.x), batch.y)
        return StepOutput(loss * float("nan") if batch.epoch == self.nan_in else loss)


def _two_stage_run(monkeypatch, keep=False, nan_in=None, **kw):
    made, optimisers = [], []

    class SGD(torch.optim.SGD):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.first_state = None
            optimisers.append(self)

        def step(self, *a, **k):
            if self.first_state is None:
                self.first_state = sum(len(s) for s in self.state.values())
            return super().step(*a, **k)

    def create(name, **opts):
        made.append(TwoStages(keep, nan_in))
        return made[-1]

    monkeypatch.setattr(harness, "create_method", create)
    monkeypatch.setattr(harness.torch.optim, "SGD", SGD)
    rec = train(tiny_config(**kw), device="cpu")
    return rec, made[0], optimisers


@pytest.mark.parametrize("keep", [False, True])
def test_a_method_of_two_stages_trains_twice_the_epochs(monkeypatch, keep):
    rec, method, optimisers = _two_stage_run(monkeypatch, keep)
    E = EPOCHS
    assert rec["status"] == "ok" and rec["stages"] == 2 and validate_record(rec) == []
    assert [(h["epoch"], h["stage"]) for h in rec["history"]] == [(e, 1 + (e > E)) for e in range(1, 2 * E + 1)]
    # the boundary hook runs once, before the first epoch of stage 2
    assert method.calls == [("epoch", e) for e in range(1, E + 1)] + [("stage", 2)] + \
        [("epoch", e) for e in range(E + 1, 2 * E + 1)]
    # the schedule restarts at the boundary: stage 2's steps see stage 1's learning rates (cosine from lr)
    half = len(method.lrs) // 2
    assert len(method.lrs) == 2 * E * 6 and method.lrs[half:] == method.lrs[:half] and method.lrs[0] == 0.05
    # a fresh optimiser (no momentum at its first step) unless the method keeps its state
    assert len(optimisers) == (1 if keep else 2)
    if not keep:
        assert optimisers[1].first_state == 0
    # final: the last stage, its epochs counted within it
    accs = [h["test_acc"] for h in rec["history"][E:]]
    best = int(np.argmax(accs))
    assert rec["final"] == {"last_acc": accs[-1], "best_acc": accs[best], "best_epoch": best + 1,
                            "last5_acc": pytest.approx(float(np.mean(accs))), "epochs_done": E}


def test_a_two_stage_run_that_diverges_in_stage_2_summarises_what_stage_2_did(monkeypatch):
    rec, _, _ = _two_stage_run(monkeypatch, nan_in=EPOCHS + 2)
    assert rec["status"] == "failed" and rec["error"]["epoch"] == EPOCHS + 2
    assert len(rec["history"]) == EPOCHS + 1 and rec["final"]["epochs_done"] == 1
    assert rec["final"]["last_acc"] == rec["history"][-1]["test_acc"] and validate_record(rec) == []


def test_a_two_stage_run_resumes_across_the_boundary(monkeypatch, tmp_path):
    from tests.test_checkpoint import Stop, interrupt_after, strip

    monkeypatch.setattr(harness, "create_method", lambda name, **opts: TwoStages())
    cfg = tiny_config(epochs=2, val_size=40)  # a validation split: no NaN (never equal to itself) is compared
    whole = train(cfg, device="cpu", results_dir=tmp_path / "whole", checkpoint_every=0)
    for stop in (2, 3):  # at the boundary, inside stage 2
        with monkeypatch.context() as m:
            interrupt_after(m, stop)
            with pytest.raises(Stop):
                train(cfg, device="cpu", results_dir=tmp_path / f"cut{stop}", checkpoint_every=0)
        resumed = train(cfg, device="cpu", results_dir=tmp_path / f"cut{stop}", checkpoint_every=0)
        assert resumed["resumed_from_epoch"] == stop + 1
        assert strip(resumed["history"]) == strip(whole["history"]) and resumed["final"] == whole["final"]


def test_schema_takes_stages_times_epochs(monkeypatch, record):
    rec, _, _ = _two_stage_run(monkeypatch)
    good = json.loads(json.dumps(rec, default=str))
    assert validate_record(good) == []

    def broken(mutate) -> list[str]:
        r = copy.deepcopy(good)
        mutate(r)
        return validate_record(r)

    assert broken(lambda r: r.pop("stages")) == [f"history has {2 * EPOCHS} epochs, the config only {EPOCHS}"]
    assert broken(lambda r: r.update(stages=1))[0].startswith("key 'stages'")
    assert broken(lambda r: r["history"][EPOCHS].update(stage=1)) == [
        f"key 'history[{EPOCHS}].stage' is 1, expected 2 (2 stages of {EPOCHS} epochs)"]
    assert broken(lambda r: r["history"][0].pop("stage")) == [
        f"key 'history[0].stage' is None, expected 1 (2 stages of {EPOCHS} epochs)"]
    extra = dict(good["history"][-1], epoch=2 * EPOCHS + 1)
    assert broken(lambda r: r["history"].append(extra)) == [
        f"history has {2 * EPOCHS + 1} epochs, the config only {2 * EPOCHS} (2 stages of {EPOCHS})"]
    # a one-stage record is unchanged: no stage keys, and epochs still bound its history
    assert "stages" not in record and not any("stage" in h for h in record["history"])


def test_leaderboard_and_plots_judge_the_last_stage(record):
    from nlbench.benchmark import plots
    from nlbench.benchmark.leaderboard import last_stage, mean_epoch_time, stage_count, val_selected_acc

    one = [{"epoch": e, "test_acc": a, "val_acc": v, "epoch_time_s": 1.0}
           for e, a, v in ((1, 0.5, 0.9), (2, 0.6, 0.2))]
    two = [dict(h, stage=1) for h in one] + [dict(h, epoch=h["epoch"] + 2, stage=2, test_acc=h["test_acc"] / 2,
                                                  val_acc=1 - h["val_acc"]) for h in one]
    assert (stage_count(one), stage_count(two)) == (1, 2) and last_stage(one) == one and last_stage(two) == two[2:]
    assert mean_epoch_time(one) == 1.0 and mean_epoch_time(two) == 2.0  # both stages per epoch of the protocol
    assert val_selected_acc(one) == 0.5 and val_selected_acc(two) == 0.3  # stage 2's best val (0.8) is epoch 4
    rec = copy.deepcopy(record)  # the record as a method of two stages would have it: stage 2 scores half
    rec["stages"] = 2
    rec["history"] = [dict(h, stage=1) for h in record["history"]] + [
        dict(h, epoch=h["epoch"] + EPOCHS, stage=2, test_acc=h["test_acc"] / 2) for h in record["history"]]
    curves = plots._curves([rec], ["test_acc"])
    (band,) = [c["test_acc"] for setting in curves.values() for c in setting.values()]
    assert list(band.mean) == [h["test_acc"] / 2 for h in record["history"]]  # stage 2, epochs 1..E
