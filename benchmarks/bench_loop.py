"""ERM's training throughput in the harness against a bare PyTorch loop on the same model, batch and data layout.

Both train ``mlp512`` on a 4,000-image uint8 pool held as one tensor (the memorisation protocol's pool size),
batch 64, SGD lr 0.05 momentum 0.9, normalising each batch: the bare loop is the least any harness must do. The
harness figure is its own ``epoch_time_s`` (training only; evaluation is outside it in both). One torch thread,
process CPU time, so other load on the machine moves both alike. Writes ``results/bench/loop.json``::

    .venv/bin/python benchmarks/bench_loop.py [--epochs 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.env import cpu_numerics
from nlbench.benchmark.harness import train
from nlbench.datasets.base import Dataset
from nlbench.models import create_model

POOL, META, VAL, TEST, BATCH = 4000, 100, 0, 1000, 64


def fake_fmnist() -> Dataset:
    g = torch.Generator().manual_seed(0)
    n = POOL + META + VAL
    return Dataset(name="fashion-mnist", x_train=torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
                   y_train=torch.arange(n) % 10, x_test=torch.randint(0, 256, (TEST, 1, 28, 28), generator=g,
                                                                       dtype=torch.uint8),
                   y_test=torch.arange(TEST) % 10, classes=[str(i) for i in range(10)], mean=(0.286,), std=(0.353,))


def bare_loop(epochs: int) -> list[float]:
    """CPU seconds per training epoch of the simplest loop: permute, slice, normalise, forward, backward, step."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (POOL, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.arange(POOL) % 10
    torch.manual_seed(0)
    model = create_model("mlp512", 10, (1, 28, 28))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    times = []
    for _ in range(epochs):
        t0 = time.process_time()
        perm = torch.randperm(POOL, generator=g)
        for i in range(0, POOL, BATCH):
            idx = perm[i:i + BATCH]
            xb = (x[idx].float() / 255.0 - 0.286) / 0.353
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.process_time() - t0)
    return times


def harness(epochs: int) -> list[float]:
    cfg = RunConfig(method="erm", noise="sym50", dataset="fashion-mnist", model="mlp512", epochs=epochs,
                    batch_size=BATCH, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant", meta_size=META,
                    val_size=VAL)
    clock = time.perf_counter
    time.perf_counter = time.process_time  # the harness times epochs with perf_counter: make it CPU time here
    try:
        rec = train(cfg, device="cpu", dataset=fake_fmnist())
    finally:
        time.perf_counter = clock
    return [h["epoch_time_s"] for h in rec["history"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bare_loop(1), harness(1)  # warm-up
    bare, ours = bare_loop(args.epochs), harness(args.epochs)
    b, h = statistics.median(bare), statistics.median(ours)
    out = {"what": "CPU seconds per training epoch, median over epochs; mlp512, pool 4000, batch 64, 1 thread",
           "bare_loop_s": b, "harness_s": h, "ratio": h / b, "bare_samples_per_s": POOL / b,
           "harness_samples_per_s": POOL / h, "epochs": args.epochs, "torch": torch.__version__,
           "created": datetime.now(UTC).isoformat(timespec="seconds"), **cpu_numerics()}
    print(json.dumps(out, indent=1))
    if args.write:
        path = Path(__file__).resolve().parent.parent / "results" / "bench" / "loop.json"
        path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
