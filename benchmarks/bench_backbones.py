"""Images/s of one ERM training step (forward + backward + SGD) per backbone, on whatever device is present.

    .venv/bin/python benchmarks/bench_backbones.py [--device cpu|cuda] [--threads N] [--write]

Each backbone trains on random 3x32x32 inputs (ResNet-50 at its Clothing1M size is far too slow for a CPU, so it
is measured at 32x32 too) through the harness's own step: uint8 batch on the device, per-batch normalisation,
and on CUDA channels_last + bf16 autocast. The median over ``--steps`` steps after ``--warmup`` steps is
reported. ``--write`` stores the table as JSON in results/bench/backbones-<device>.json (or ``--out PATH``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nlbench.benchmark.env import select_device
from nlbench.benchmark.harness import autocast_factory, make_prep
from nlbench.datasets.base import Dataset
from nlbench.models import create_model

BACKBONES = ["resnet32", "preact-resnet18", "resnet34", "wrn-28-10", "resnet50", "cifar-fast"]


def bench(name: str, device: torch.device, batch: int, steps: int, warmup: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    ds = Dataset("bench", x, y, x[:2], y[:2], [str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3)
    prep, autocast = make_prep(ds, device), autocast_factory(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name, 10, (3, 32, 32)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb, yb = x.to(device), y.to(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast():
            loss = F.cross_entropy(model(prep(xb)), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default=",".join(BACKBONES))
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path for --write "
                    "[default: results/bench/backbones-<device>.json]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    rows = {}
    for name in args.models.split(","):
        rows[name] = bench(name, device, args.batch, args.steps, args.warmup)
        print(f"{name:16s} {rows[name]:10.1f} images/s", flush=True)
    out = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "batch": args.batch, "steps": args.steps, "torch": torch.__version__, "images_per_s": rows,
           "command": "python benchmarks/bench_backbones.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items() if v not in (None, False) and k != "write")}
    if args.write:
        path = Path(args.out) if args.out else Path("results/bench") / f"backbones-{device.type}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
