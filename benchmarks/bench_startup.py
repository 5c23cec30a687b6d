"""Start-up time of the CLI: what a user waits for before anything trains.

Each command runs in a fresh interpreter (as from a shell), ``--repeat`` times; the table gives the median wall
time. In-process figures: the import time of torch and of ``nlbench.cli``, and the time to load and decode
Fashion-MNIST (60,000 + 10,000 images from the gzipped IDX files). Writes ``results/bench/startup.json``::

    .venv/bin/python benchmarks/bench_startup.py [--repeat 3] [--write]

Run it on a quiet machine: the figures are wall times and move with any other load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

CLI = [sys.executable, "-m", "nlbench.cli"]
RUN = ["run", "--dataset", "synthetic", "--data-opt", "n_train=400", "--data-opt", "n_test=100", "--meta-size",
       "40", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress"]


def wall(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_process(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write results/bench/startup.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(CLI + RUN + ["--results-dir", tmp], check=True, capture_output=True)  # the record to reuse
        commands = {
            "nlbench --version": CLI + ["--version"],
            "nlbench list methods": CLI + ["list", "methods"],
            "nlbench noise show sym40 --dataset fashion-mnist": CLI + ["noise", "show", "sym40", "--dataset",
                                                                       "fashion-mnist"],
            "nlbench run (finished record reused)": CLI + RUN + ["--results-dir", tmp],
        }
        cli = {name: round(wall(cmd, args.repeat), 2) for name, cmd in commands.items()}
    timer = "import time; t = time.perf_counter(); {}; print(time.perf_counter() - t)"
    inproc = {
        "import torch": in_process(timer.format("import torch")),
        "import nlbench.cli": in_process(timer.format("import nlbench.cli")),
        "load fashion-mnist (decode 70,000 images)": in_process(
            "import time; from nlbench.datasets import load_dataset; t = time.perf_counter(); "
            "load_dataset('fashion-mnist', None); print(time.perf_counter() - t)"),
    }
    out = {"what": f"median wall seconds over {args.repeat} fresh interpreters; in-process seconds",
           "created": datetime.now(UTC).isoformat(timespec="seconds"),
           "cli_s": cli, "in_process_s": {k: round(v, 2) for k, v in inproc.items()}}
    print(json.dumps(out, indent=1))
    if args.write:
        path = Path(__file__).resolve().parents[1] / "results" / "bench" / "startup.json"
        path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
