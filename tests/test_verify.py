"""`nlbench results verify`: reruns records and tells bit-identical, within the seed spread, and outside."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from nlbench.benchmark import verify as V
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.cli import app


def cfg(seed: int) -> RunConfig:
    return RunConfig(method="erm", noise="sym40", dataset="synthetic", epochs=2, meta_size=40, batch_size=64,
                     seed=seed, dataset_options={"n_train": 400, "n_test": 100})


def verify(tmp_path, *extra: str):
    return CliRunner().invoke(app, ["results", "verify", "--results-dir", str(tmp_path), *extra])


def tamper(path, delta: float) -> None:
    rec = json.loads(path.read_text())
    rec["history"][-1]["test_acc"] += delta
    rec["final"]["last_acc"] += delta
    path.write_text(json.dumps(rec))


def in_process_rerun(record, *, data_root=None, device="cpu", timeout=None):
    """:func:`V.rerun` without its fresh process (the records here were made in this process, so its numerics
    are theirs): the classification is what is tested here, the fresh process below."""
    return train(RunConfig.from_dict(record["config"]), data_root=data_root, device=device, results_dir=None,
                 checkpoint_every=None)


def test_verify_reruns_in_a_fresh_process_with_the_records_numerics(tmp_path):
    rec = train(cfg(0), device="cpu", results_dir=tmp_path, checkpoint_every=None)
    result = verify(tmp_path)
    assert result.exit_code == 0, result.output
    assert f"{rec['run_name']}: bit-identical [native numerics: bit-identical only on the same CPU kind]" \
        in result.stdout
    assert "1 rerun: 1 bit-identical, 0 within" in result.stdout and "(0 made in portable numerics, 1 native)" \
        in result.stdout


def test_verify_classifies_reruns(tmp_path, monkeypatch):
    monkeypatch.setattr(V, "rerun", in_process_rerun)
    recs = [train(cfg(s), device="cpu", results_dir=tmp_path, checkpoint_every=None) for s in range(3)]
    spread = abs(recs[1]["final"]["last_acc"] - recs[2]["final"]["last_acc"])  # seed 0's yardstick
    assert spread > 0.002
    result = verify(tmp_path, "--sample", "3")
    assert result.exit_code == 0, result.output
    assert "3 rerun: 3 bit-identical, 0 within the seed spread of their cell, 0 outside it" in result.stdout
    path = tmp_path / "runs" / f"{recs[0]['run_name']}.json"
    tamper(path, 0.001)  # less than the seeds' spread
    result = verify(tmp_path, "--sample", "3")
    assert result.exit_code == 0 and "2 bit-identical, 1 within" in result.stdout
    assert f"{recs[0]['run_name']}: different, within the seed spread" in result.stdout
    tamper(path, -0.5)
    result = verify(tmp_path, "--sample", "3")
    assert result.exit_code == 1 and "1 outside it" in result.stdout and "first differs at epoch 2" in result.stdout


def test_classify_edge_cases():
    rec = {"run_name": "r", "status": "ok", "final": {"last_acc": 0.5}, "env": {"threads": 1},
           "history": [{"epoch": 1, "test_acc": 0.5, "epoch_time_s": 1.0}]}
    same = {**rec, "env": {"threads": 2}, "history": [{"epoch": 1, "test_acc": 0.5, "epoch_time_s": 9.0}]}
    v = V.classify(rec, same, None)
    assert v.verdict == "identical" and v.env_diff == {"threads": (1, 2)}
    # a record made before portable mode existed is native, not "portable None"
    v2 = V.classify(rec, {**same, "env": {"threads": 1, "portable": False}}, None)
    assert v2.env_diff == {}
    v3 = V.classify(rec, {**same, "env": {"threads": 1, "portable": True}}, None)
    assert v3.env_diff == {"portable": (False, True)}
    moved = {**rec, "final": {"last_acc": 0.51}, "history": [{"epoch": 1, "test_acc": 0.51}]}
    assert V.classify(rec, moved, None).verdict == "outside"  # one seed: no spread to absorb it
    assert V.classify(rec, moved, 0.02).verdict == "within"
    assert V.classify(rec, {**same, "status": "failed"}, 0.5).verdict == "outside"
    assert [r["run_name"] for r in V.sample([{"run_name": str(i)} for i in range(10)], 3, 0)] == \
        [r["run_name"] for r in V.sample([{"run_name": str(i)} for i in range(10)], 3, 0)]
