"""Search for a Fashion-MNIST protocol in which ERM memorises noisy labels (issue 13).

Each candidate is a RunConfig override (pool size, model, weight decay, epochs, schedule). For every candidate
ERM runs on ``sym50``, ``pairflip45`` and ``clean``; a candidate qualifies when ERM's mean (best - last) test
accuracy over the seeds is >= 10 points on both noises and < 1 point on clean labels. Records go to
``results/protocol/runs/``; the table of what was tried to ``results/protocol/search.md``::

    .venv/bin/python benchmarks/protocol_search.py --candidates A,B --seeds 0 --workers 2
    .venv/bin/python benchmarks/protocol_search.py --table          # table from the records only
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "results" / "protocol"
NOISES = ("sym50", "pairflip45", "clean")

#: name -> (description, RunConfig overrides)
CANDIDATES: dict[str, tuple[str, dict]] = {
    "lenet-full-e30": ("LeNet, full pool, 30 epochs, constant lr 0.05, no wd",
                       dict(model="lenet", epochs=30, schedule="constant", weight_decay=0.0)),
    "mlp256-12k-e40": ("MLP 256x2, 12k train (10k pool), 40 epochs, constant lr 0.05, no wd",
                       dict(model="mlp", epochs=40, schedule="constant", weight_decay=0.0,
                            dataset_options={"train_size": 12000})),
    "mlp1024-12k-e40": ("MLP 1024x2, 12k train (10k pool), 40 epochs, constant lr 0.05, no wd",
                        dict(model="mlp1024", epochs=40, schedule="constant", weight_decay=0.0,
                             dataset_options={"train_size": 12000})),
    "mlp1024-7k-e40": ("MLP 1024x2, 7k train (5k pool), 40 epochs, constant lr 0.05, no wd",
                       dict(model="mlp1024", epochs=40, schedule="constant", weight_decay=0.0,
                            dataset_options={"train_size": 7000})),
    "mlp1024-7k-e30": ("MLP 1024x2, 7k train (5k pool), 30 epochs, constant lr 0.05, no wd",
                       dict(model="mlp1024", epochs=30, schedule="constant", weight_decay=0.0,
                            dataset_options={"train_size": 7000})),
    "mlp1024-7k-e40-lr01": ("MLP 1024x2, 7k train (5k pool), 40 epochs, constant lr 0.1, no wd",
                            dict(model="mlp1024", epochs=40, schedule="constant", weight_decay=0.0, lr=0.1,
                                 dataset_options={"train_size": 7000})),
}
CANDIDATES.update({
    "mlp512-6k-e30-b64": ("MLP 512x2, 6k train (4k pool), 30 epochs, batch 64, constant lr 0.05, no wd",
                          dict(model="mlp512", epochs=30, batch_size=64, schedule="constant", weight_decay=0.0,
                               dataset_options={"train_size": 6000})),
    "mlp512-7k-e30-step": ("MLP 512x2, 7k train (5k pool), 30 epochs, lr 0.1 x0.1 at 20, no wd",
                           dict(model="mlp512", epochs=30, schedule="step", milestones=(20,), lr=0.1,
                                weight_decay=0.0, dataset_options={"train_size": 7000})),
    "mlp512-6k-e30-b64-step": ("MLP 512x2, 6k train (4k pool), 30 epochs, batch 64, lr 0.05 x0.1 at 20, no wd",
                               dict(model="mlp512", epochs=30, batch_size=64, schedule="step", milestones=(20,),
                                    weight_decay=0.0, dataset_options={"train_size": 6000})),
    "mlp1024-6k-e25-b64-step": ("MLP 1024x2, 6k train (4k pool), 25 epochs, batch 64, lr 0.05 x0.1 at 15, no wd",
                                dict(model="mlp1024", epochs=25, batch_size=64, schedule="step", milestones=(15,),
                                     weight_decay=0.0, dataset_options={"train_size": 6000})),
    "mlp512-5k-e30-b64-step": ("MLP 512x2, 5k train (3k pool), 30 epochs, batch 64, lr 0.05 x0.1 at 20, no wd",
                               dict(model="mlp512", epochs=30, batch_size=64, schedule="step", milestones=(20,),
                                    weight_decay=0.0, dataset_options={"train_size": 5000})),
    "mlp512-6k-e30-b32-step": ("MLP 512x2, 6k train (4k pool), 30 epochs, batch 32, lr 0.05 x0.1 at 20, no wd",
                               dict(model="mlp512", epochs=30, batch_size=32, schedule="step", milestones=(20,),
                                    weight_decay=0.0, dataset_options={"train_size": 6000})),
    "mlp512-6k-e30-b64-step25": ("MLP 512x2, 6k train (4k pool), 30 epochs, batch 64, lr 0.05 x0.1 at 25, no wd",
                                 dict(model="mlp512", epochs=30, batch_size=64, schedule="step", milestones=(25,),
                                      weight_decay=0.0, dataset_options={"train_size": 6000})),
    "mlp512-5100-m100-e30-b64-step25": ("MLP 512x2, 5,100 train: meta 100 (MW-Net's 2% of the pool), val 1000, "
                                        "pool 4000; 30 epochs, batch 64, lr 0.05 x0.1 at 25, no wd",
                                        dict(model="mlp512", epochs=30, batch_size=64, schedule="step",
                                             milestones=(25,), weight_decay=0.0, meta_size=100,
                                             dataset_options={"train_size": 5100})),
})
BASE = dict(dataset="fashion-mnist", method="erm", batch_size=128, lr=0.05, momentum=0.9, meta_size=1000,
            val_size=1000)


def _run(args: tuple[str, str, int]) -> str:
    import torch

    torch.set_num_threads(1)
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train

    cand, noise, seed = args
    cfg = RunConfig(**{**BASE, **CANDIDATES[cand][1], "noise": noise, "seed": seed})
    rec = train(cfg, device="cpu", results_dir=OUT)
    accs = [h["test_acc"] for h in rec["history"]]
    return f"{cand} {noise} s{seed}: best {max(accs):.4f} last {accs[-1]:.4f} ({rec['wall_time_s']:.0f} s)"


def _candidate(config: dict) -> str | None:
    """The candidate whose protocol a record's config is (``None`` if it is none of them)."""
    def norm(v):
        return list(v) if isinstance(v, tuple) else v

    for cand, (_, overrides) in CANDIDATES.items():
        want = {k: v for k, v in {**BASE, **overrides}.items() if k != "method"}
        want.setdefault("milestones", ())
        if all(norm(config.get(k)) == norm(v) for k, v in want.items()):
            return cand
    return None


def table() -> str:
    rows: dict[tuple, list] = {}
    for f in sorted((OUT / "runs").glob("*.json")):
        r = json.loads(f.read_text())
        cand = _candidate(r["config"])
        if cand is None:
            continue
        accs = [h["test_acc"] for h in r["history"]]
        rows.setdefault((cand, r["noise"]), []).append((max(accs) - accs[-1], max(accs), accs[-1],
                                                        r["wall_time_s"]))
    lines = ["| candidate | what | noise | seeds | best (%) | last (%) | best - last (points) | s per run |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for cand, (desc, _) in CANDIDATES.items():
        for noise in NOISES:
            v = rows.get((cand, noise))
            if not v:
                continue
            n = len(v)
            mean = [sum(x[i] for x in v) / n for i in range(4)]
            lines.append(f"| {cand} | {desc} | {noise} | {n} | {100 * mean[1]:.2f} | {100 * mean[2]:.2f} | "
                         f"{100 * mean[0]:.2f} | {mean[3]:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--noises", default=",".join(NOISES))
    p.add_argument("--seeds", default="0")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--table", action="store_true", help="only regenerate the table from the records")
    a = p.parse_args()
    if not a.table:
        jobs = [(c, n, int(s)) for c in a.candidates.split(",") for s in a.seeds.split(",")
                for n in a.noises.split(",")]
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(a.workers) as ex:
            for line in ex.map(_run, jobs):
                print(line, flush=True)
    (OUT / "search.md").write_text(table())
    print(table())


if __name__ == "__main__":
    main()
