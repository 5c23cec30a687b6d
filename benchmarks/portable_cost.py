"""What portable numerics (``NLBENCH_PORTABLE=1``, :mod:`nlbench.portable`) cost, and whether they reproduce.

Each workload trains in a fresh interpreter (the pins must be set before torch loads), alternating native and
portable ``--repeats`` times at one torch thread, and the table gives the median training time (the sum of
the epochs' ``epoch_time_s``: data loading and the torch import are the same in both modes), the ratio, and
whether the portable runs' histories are equal bit for bit to each other (and to the native run's).

    .venv/bin/python benchmarks/portable_cost.py              # ~3 min on 2 shared CPU cores
    .venv/bin/python benchmarks/portable_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKLOADS = {
    # the committed fmnist-default protocol's model (LeNet: two convolutions, three linear layers)
    "fmnist lenet erm sym40, 1 epoch of 10,000": dict(preset="fmnist", method="erm", noise="sym40", epochs=1,
                                                      dataset_options={"train_size": 10000}),
    # the memorisation protocol's 512x2 MLP (linear layers only: MKL GEMM)
    "fmnist-memorize mlp512 erm sym50, 2 epochs": dict(preset="fmnist-memorize", method="erm", noise="sym50",
                                                       epochs=2, milestones=()),
    # a meta-learning method (second-order gradients through the network)
    "fmnist lenet meta-reweight sym40, 1 epoch of 5,000": dict(preset="fmnist", method="meta-reweight",
                                                               noise="sym40", epochs=1,
                                                               dataset_options={"train_size": 5000}),
}

CHILD = """
import json, sys
import torch
torch.set_num_threads(1)
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
spec = json.loads(sys.argv[1])
preset = spec.pop("preset")
rec = train(RunConfig.from_preset(preset, **spec), device="cpu", checkpoint_every=None)
hist = [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in rec["history"]]
print(json.dumps({"train_s": sum(h["epoch_time_s"] for h in rec["history"]), "history": hist,
                  "portable": rec["env"]["portable"], "capability": rec["env"]["cpu_capability"],
                  "cpu": rec["env"]["cpu_model"], "acc": rec["final"]["last_acc"]}))
"""


def run(spec: dict, portable: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NLBENCH_PORTABLE", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    if portable:
        env["NLBENCH_PORTABLE"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| workload | native s (median) | portable s (median) | portable / native | portable runs "
          "bit-identical | native == portable | last acc native / portable |")
    print("|---|---|---|---|---|---|---|")
    cpu = None
    for name, spec in WORKLOADS.items():
        nat, por = [], []
        for _ in range(args.repeats):
            nat.append(run(dict(spec), False))
            por.append(run(dict(spec), True))
        assert all(p["portable"] and p["capability"] == "AVX2" for p in por) and not any(n["portable"] for n in nat)
        cpu = nat[0]["cpu"]
        tn, tp = statistics.median(r["train_s"] for r in nat), statistics.median(r["train_s"] for r in por)
        same = all(p["history"] == por[0]["history"] for p in por)
        cross = nat[0]["history"] == por[0]["history"]
        print(f"| {name} | {tn:.2f} | {tp:.2f} | {tp / tn:.2f} | {'yes' if same else 'NO'} | "
              f"{'yes' if cross else 'no'} | {100 * nat[0]['acc']:.2f} / {100 * por[0]['acc']:.2f} |", flush=True)
    print(f"\nCPU: {cpu}; torch threads 1; {args.repeats} runs per mode, alternating.")


if __name__ == "__main__":
    main()
