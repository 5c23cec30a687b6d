"""Why l2rw diverges under the memorisation protocol: per-step weighted loss, non-zero weights, largest logit and
parameter norm of ``l2rw`` on Fashion-MNIST sym20, seed 0, ``--preset fmnist-memorize`` (issue 13 asks for the
explanation). Writes ``results/protocol/l2rw-divergence.json``::

    .venv/bin/python benchmarks/probe_l2rw.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.methods import l2rw

OUT = Path(__file__).resolve().parent.parent / "results" / "protocol" / "l2rw-divergence.json"


def main() -> None:
    torch.set_num_threads(1)
    original = l2rw.L2RW.step
    trace: list[dict] = []

    def step(self, batch, model):
        out = original(self, batch, model)
        with torch.no_grad():
            trace.append({"epoch": batch.epoch, "step": batch.step, "weighted_loss": float(out.loss.detach()),
                          "nonzero_weights": int((out.weights > 0).sum()), "batch": len(batch.y),
                          "max_abs_logit": float(model(batch.x).abs().max()),
                          "param_norm": math.sqrt(sum(float(p.pow(2).sum()) for p in model.parameters()))})
        return out

    l2rw.L2RW.step = step
    try:
        cfg = RunConfig.from_preset("fmnist-memorize", method="l2rw", noise="sym20", seed=0)
        rec = train(cfg, device="cpu")
    finally:
        l2rw.L2RW.step = original
    summary = {"config_hash": cfg.hash(), "status": rec["status"], "error": rec.get("error"),
               "test_acc": [h["test_acc"] for h in rec["history"]],
               "trace_every_10th": trace[::10], "trace_last_40": trace[-40:]}
    def finite(v):  # NaN/inf as null, as in records
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v

    OUT.write_text(json.dumps(finite(summary), indent=1, allow_nan=False, default=str) + "\n")
    print(f"{rec['status']}: {rec.get('error')}; wrote {OUT}")


if __name__ == "__main__":
    main()
