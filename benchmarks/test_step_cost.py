"""Cost of ONE training step of every registered method, relative to ERM.

A step is exactly what the harness does: ``method.step`` inside autocast, ``zero_grad``, ``loss.backward()``,
``SGD.step()`` (momentum 0.9, Nesterov, weight decay 5e-4). Per-epoch work (DivideMix's GMM over the pool, a
transition-matrix estimate) is not part of a step: the leaderboard's epoch-time column, measured by the
harness, includes it. Two settings: ``lenet`` on 1x28x28 with batch 128
(Fashion-MNIST) and ``resnet32`` on 3x32x32 with batch 100 (MW-Net's CIFAR setting), random inputs and labels
(the cost does not depend on the values), a meta set of 1000. Every method is parametrised from
``list_methods()``, so new methods are measured automatically; ``oracle``, ``clean-only`` and ``erm-meta`` are
skipped (an ERM step on other data).

Fairness on a shared CPU: each method's step is paired with an ERM step timed right before it (both on their
own copy of the same model), and the reported ratio is the median of the per-pair ratios, so load that changes
over seconds cancels. Two ways to run it:

- ``pytest benchmarks/test_step_cost.py`` (pytest-benchmark; not in the default test run, ``testpaths=tests``):
  times the method's step, runs the paired ERM step in pedantic's untimed ``setup`` and stores
  ``erm_median_s`` and ``ratio_to_erm`` in ``extra_info``.
- ``python benchmarks/test_step_cost.py [--steps N] [--warmup W] [--models lenet,resnet32] [--write]``: a table
  of ratios for the README, round-robin over all methods (erm, method, erm, method, ...); ``--write`` merges
  it into ``results/bench/step_cost.json`` under a key naming threads, clock and device.

On a CPU shared with other jobs, ``--threads 1 --clock cpu`` (process CPU time of one thread) is the most
stable measure; the default (torch's threads, wall clock) is what a run sees.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from nlbench.benchmark.env import make_generator
from nlbench.benchmark.harness import autocast_factory
from nlbench.methods import Batch, Method, MethodContext, TrainData, TrainSet, create_method, list_methods
from nlbench.models import create_model

#: methods that train ERM on other data: their step costs what ERM's does
SKIP = ("oracle", "clean-only", "erm-meta")
#: name -> (model, input shape, batch size)
SETTINGS = {"mlp512": ("mlp512", (1, 28, 28), 64), "lenet": ("lenet", (1, 28, 28), 128),
            "resnet32": ("resnet32", (3, 32, 32), 100)}
#: targets on 2 CPU cores (issue 3): step time / ERM step time
TARGETS = {"l2rw": 3.5, "meta-reweight": 3.5, "mwnet": 3.5, "surrogate": 1.25}
NUM_CLASSES, META_SIZE, NUM_TRAIN = 10, 1000, 2000
#: the run length the methods are set up for; steps are timed in its last epoch
EPOCHS = 30


def bench_methods() -> list[str]:
    return [m for m in list_methods() if m not in SKIP]


@dataclass
class Runner:
    """One method with its own model copy, optimiser and data: ``step()`` runs one harness step."""

    method: Method
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    batch: int
    gen: torch.Generator
    autocast: object
    n: int
    t: int = 0

    def step(self) -> None:
        idx = torch.randperm(self.n, generator=self.gen, device=self.x.device)[:self.batch]
        with self.autocast():
            out = self.method.step(Batch(self.x[idx], self.y[idx], idx, 0.05, self.t, EPOCHS), self.model)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.opt.step()
        self.t += 1

    def timed(self, clock=time.perf_counter) -> float:
        if self.x.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        self.step()
        if self.x.device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - t0


def make_runner(method_name: str, setting: str, device: str = "cpu", seed: int = 0) -> Runner:
    """Build ``method_name`` on the setting's model (same init for every method) with a random data set."""
    arch, shape, batch = SETTINGS[setting]
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_TRAIN, *shape, generator=g).to(dev)  # already "normalised": prep is the identity
    y = torch.randint(0, NUM_CLASSES, (NUM_TRAIN,), generator=g).to(dev)
    meta_x = torch.randn(META_SIZE, *shape, generator=g).to(dev)
    meta_y = (torch.arange(META_SIZE) % NUM_CLASSES).to(dev)
    data = TrainData(pool=TrainSet(x, y, torch.zeros_like(y, dtype=torch.bool)), pool_true=y, meta_x=meta_x,
                     meta_y=meta_y, val_x=x[:0], val_y=y[:0], test_x=x[:0], test_y=y[:0], num_classes=NUM_CLASSES)
    method = create_method(method_name)
    if not method.uses_meta:  # as the harness does: a method that does not declare the meta set gets none
        meta_x, meta_y = meta_x[:0], meta_y[:0]
    train_set = method.train_set(data)

    def build(k: int) -> torch.nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1000 * k)
            return create_model(arch, NUM_CLASSES, shape).to(dev).train()

    model = build(0)
    autocast = autocast_factory(dev)
    ctx = MethodContext(model=model, meta_x=meta_x, meta_y=meta_y, num_train=len(train_set),
                        num_classes=NUM_CLASSES, batch_size=batch, device=dev,
                        generator=make_generator(dev, seed, 3), prep=lambda t: t, autocast=autocast,
                        train_x=train_set.x, train_y=train_set.y, epochs=EPOCHS,
                        steps_per_epoch=len(train_set) // batch,
                        noise_rate=0.4 if method.uses_noise_rate else None, model_factory=build)
    method.setup(ctx)
    # Steps are timed in the last epoch, after every warm-up and stage switch: the epoch hooks run once each
    # (with random logits standing in for the pool's, which only the hooks' own cost would need).
    ctx.predict = lambda net, x=None: torch.randn(len(train_set.y if x is None else x), NUM_CLASSES, generator=g)
    for epoch in range(1, EPOCHS):
        method.on_epoch_start(epoch, model)
        method.on_epoch_end(epoch, model)
    method.on_epoch_start(EPOCHS, model)
    # a method's extra networks (co-teaching, DivideMix) train in the same optimiser, as in the harness
    params = list(model.parameters()) + [p for net in method.networks() for p in net.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    return Runner(method, model, opt, train_set.x, train_set.y, batch, torch.Generator(device=dev).manual_seed(1),
                  autocast, len(train_set))


def measure(setting: str, methods: list[str], steps: int, warmup: int, device: str = "cpu",
            clock=time.perf_counter, log=None) -> dict:
    """Round-robin paired timings: per round and method, one ERM step then one method step."""
    runners = {m: make_runner(m, setting, device) for m in methods}
    erm = make_runner("erm", setting, device)
    for _ in range(warmup):
        erm.step()
        for r in runners.values():
            r.step()
    pairs: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
    for i in range(steps):
        for m, r in runners.items():
            pairs[m].append((erm.timed(clock), r.timed(clock)))
        if log:
            log(f"{setting}: round {i + 1}/{steps}")
    out = {}
    for m, p in pairs.items():
        ratios = sorted(b / a for a, b in p)
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[m] = {"ratio": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
                  "step_ms": 1000 * statistics.median(b for _, b in p),
                  "erm_ms": 1000 * statistics.median(a for a, _ in p)}
    return out


# ---------------------------------------------------------------------------------------------- pytest mode

try:
    import pytest
except ImportError:  # pragma: no cover - script mode without pytest installed
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("setting", sorted(SETTINGS))
    @pytest.mark.parametrize("method", bench_methods())
    def test_step_cost(benchmark, method, setting):
        runner = make_runner(method, setting)
        erm = make_runner("erm", setting)
        erm_times: list[float] = []
        for _ in range(2):  # warm-up
            erm.step()
            runner.step()
        benchmark.pedantic(runner.step, setup=lambda: erm_times.append(erm.timed()), rounds=8, iterations=1)
        erm_median = statistics.median(erm_times)
        benchmark.extra_info.update({"erm_median_s": erm_median,
                                     "ratio_to_erm": benchmark.stats.stats.median / erm_median})


# ---------------------------------------------------------------------------------------------- script mode

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed rounds per method (median over them)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--models", default=",".join(SETTINGS), help="comma list of " + ", ".join(SETTINGS))
    ap.add_argument("--methods", default=None, help="comma list (default: all registered but " + ", ".join(SKIP) + ")")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: process CPU time (robust to other load with --threads 1)")
    ap.add_argument("--write", action="store_true", help="save results/bench/step_cost.json")
    ap.add_argument("--out", default="results/bench/step_cost.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    methods = args.methods.split(",") if args.methods else bench_methods()
    settings = args.models.split(",")
    for s in settings:
        if s not in SETTINGS:
            ap.error(f"unknown model {s!r}; choose from {', '.join(SETTINGS)}")
    results = {}
    for s in settings:
        results[s] = measure(s, methods, args.steps, args.warmup, args.device, clock,
                             log=lambda msg: print(msg, file=sys.stderr, flush=True))
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"step time / ERM step time (median of {args.steps} paired steps, "
                        f"{torch.get_num_threads()} threads, {args.clock} clock, {args.device})")
    table.add_column("method")
    for s in settings:
        arch, shape, batch = SETTINGS[s]
        table.add_column(f"{arch} {'x'.join(map(str, shape))} B={batch}", justify="right")
    table.add_column("target", justify="right")
    for m in methods:
        cells = [f"{results[s][m]['ratio']:.2f}x [{results[s][m]['ratio_q1']:.2f}-{results[s][m]['ratio_q3']:.2f}]"
                 for s in settings]
        table.add_row(m, *cells, f"<= {TARGETS[m]:.2f}x" if m in TARGETS else "")
    table.add_row("(erm step, ms)", *[f"{statistics.median(r['erm_ms'] for r in results[s].values()):.1f}"
                                      for s in settings], "")
    Console().print(table)
    if args.write:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc["what"] = ("one harness training step (method.step + backward + SGD step) / one ERM step; median over "
                       "rounds of the per-pair ratio, each method step timed right after an ERM step")
        doc["targets"] = TARGETS
        key = f"threads={torch.get_num_threads()},clock={args.clock},device={args.device}"
        doc.setdefault("runs", {})[key] = {
            "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {s: {"model": SETTINGS[s][0], "input": list(SETTINGS[s][1]), "batch": SETTINGS[s][2],
                             "methods": results[s]} for s in settings}}
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {path} [{key}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
