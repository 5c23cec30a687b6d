"""The transition matrix that ``glc`` and ``forward`` estimate, which their records do not keep.

Reruns one short-protocol setting (Fashion-MNIST, LeNet, 3 epochs, the grid's config) per method, catches the
matrix when the warm-up ends, and writes the matrix, the true noise matrix and the run's final accuracy to
``results/protocol/transition-<noise>-s<seed>.json``::

    .venv/bin/python benchmarks/probe_transition.py [--noise flipback40] [--seed 0] [--threads 2]

The run is the grid's config, but the thread count may differ from the grid's (1 per worker), so the last
digits of the accuracy may too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.benchmark.records import atomic_write_text
from nlbench.methods import loss_correction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", default="flipback40")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="glc,forward")
    parser.add_argument("--out", type=Path, default=Path("results/protocol"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    caught: dict[str, list] = {}
    on_epoch_end = loss_correction.TransitionCorrected.on_epoch_end

    def catch(self, epoch, model):  # the method's own hook, then a copy of its estimate once it exists
        on_epoch_end(self, epoch, model)
        if self.T is not None and self.name not in caught:
            caught[self.name] = [[round(float(v), 4) for v in row] for row in self.T.cpu()]

    loss_correction.TransitionCorrected.on_epoch_end = catch
    out = {"noise": args.noise, "seed": args.seed, "threads": args.threads, "methods": {}}
    for method in args.methods.split(","):
        cfg = RunConfig(method=method, noise=args.noise, dataset="fashion-mnist", model="lenet", epochs=3,
                        seed=args.seed)
        record = train(cfg, device="cpu", progress=False)
        out["true_transition"] = record["noise_report"].get("transition_matrix")
        out["methods"][method] = {"config_hash": record["config_hash"], "last_acc": record["final"]["last_acc"],
                                  "estimated_transition": caught.get(method)}
        print(f"{method}: last acc {record['final']['last_acc']:.4f}; estimated diagonal "
              f"{[row[i] for i, row in enumerate(caught.get(method) or [])]}")
    path = args.out / f"transition-{args.noise}-s{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
