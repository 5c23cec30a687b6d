"""The transition matrix that ``glc`` and ``forward`` estimate, which their records do not keep.

Reruns one short-protocol setting (Fashion-MNIST, LeNet, 3 epochs, the grid's config) per method, catches the
matrix when the method estimates it (at the stage boundary of the default two-stage protocol, at the end of the
warm-up with ``--opt two_stage=false``), and writes the matrix, the true noise matrix, the epoch whose network
estimated it and the run's final accuracy to ``<out>/transition-<noise>-s<seed>[-<options>].json``::

    .venv/bin/python benchmarks/probe_transition.py [--noise flipback40] [--seed 0] [--threads 2] \\
        [--opt two_stage=false] [--results-dir DIR] [--out results/protocol]

For every class it prints the estimated diagonal and the largest off-diagonal entry against the truth's (for
``flipback40``: 0.6 on the diagonal, 0.4 at the swapped partner 2k <-> 2k+1). With ``--results-dir`` the runs'
records are written there (and an existing record of the same config is reused, so point it at a scratch folder
to retrain). The run is the grid's config, but the thread count may differ from the grid's (1 per worker), so
the last digits of the accuracy may too.
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
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="a method option for every method (repeatable), e.g. two_stage=false")
    parser.add_argument("--results-dir", type=Path, default=None, help="write the runs' records here")
    parser.add_argument("--out", type=Path, default=Path("results/protocol"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = dict(o.split("=", 1) for o in args.opt)

    caught: dict[str, dict] = {}
    hooks = {name: getattr(loss_correction.TransitionCorrected, name) for name in ("on_epoch_end", "on_stage_start")}

    def catching(name):
        real = hooks[name]

        def hook(self, *a):  # the method's own hook, then a copy of its estimate once it exists
            real(self, *a)
            if self.T is not None and self.name not in caught:
                caught[self.name] = {"T": [[round(float(v), 4) for v in row] for row in self.T.cpu()],
                                     "estimator_epoch": self.estimator_epoch}
        return hook

    for name in hooks:
        setattr(loss_correction.TransitionCorrected, name, catching(name))
    out = {"noise": args.noise, "seed": args.seed, "threads": args.threads, "options": options, "methods": {}}
    for method in args.methods.split(","):
        cfg = RunConfig(method=method, noise=args.noise, dataset="fashion-mnist", model="lenet", epochs=3,
                        seed=args.seed, method_options=dict(options))
        record = train(cfg, device="cpu", progress=False, results_dir=args.results_dir)
        if record.get("resumed") and method not in caught:
            raise SystemExit(f"{method}: {args.results_dir} already holds this run's record, which does not keep "
                             "the matrix; use an empty --results-dir")
        true = record["noise_report"].get("transition_matrix")
        out["true_transition"] = true
        est = caught.get(method) or {}
        T = est.get("T") or []
        out["methods"][method] = {"config_hash": record["config_hash"], "stages": record.get("stages", 1),
                                  "final": record["final"], "estimator_epoch": est.get("estimator_epoch"),
                                  "estimated_transition": T}
        print(f"{method} ({record.get('stages', 1)} stage(s), T from epoch {est.get('estimator_epoch')}): "
              f"last acc {record['final']['last_acc']:.4f}, best {record['final']['best_acc']:.4f}")
        for i, row in enumerate(T):
            j = max((k for k in range(len(row)) if k != i), key=lambda k: row[k])
            truth = f" (truth {true[i][i]:.2f}, {true[i][j]:.2f})" if true else ""
            print(f"  class {i}: T[{i},{i}] = {row[i]:.4f}, largest off-diagonal T[{i},{j}] = {row[j]:.4f}{truth}")
    tag = "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    path = args.out / f"transition-{args.noise}-s{args.seed}{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
