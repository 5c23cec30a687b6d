"""Regenerate ``docs/bad-input.md``: every bad input the hardening tests try, run through the real ``nlbench``
command (a fresh interpreter each, as a user's shell would) against fake data, with the line it printed and its
exit code.

    .venv/bin/python benchmarks/bad_input_table.py            # writes docs/bad-input.md (~1 min on 2 CPU cores)
    .venv/bin/python benchmarks/bad_input_table.py --out -    # prints the table instead

Each command runs in its own copy of a small work folder (``results/`` holding one finished record, ``data/``
with fake Fashion-MNIST IDX files and fake CIFAR-10 pickles, ``not-a-dir`` a plain file), so the commands show
short relative paths and the table comes out the same on every machine (a FIFO, ``fifo.toml``, is made in each
copy). Commands over :data:`MAX_SHOWN_COMMAND` characters are shown shortened. The contract every row must meet:
exit code 2, exactly one line on stderr starting with ``error:``, no traceback, nothing on stdout, and the
record already in ``results/`` untouched. Rows that break it are reported and the script exits 1 (the table is
still written). ``tests/test_hardening.py`` imports :data:`CASES`, :func:`make_template` and :func:`run_case`
from here, so the documented table and the tests run the same commands.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pickle
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"
SYN = ("--dataset", "synthetic")  # the cheap dataset, for inputs that have nothing to do with data files


@dataclass(frozen=True)
class Case:
    """One bad input: ``args`` after ``nlbench``, run inside the case's work folder; ``expect`` is a fragment
    the error line must contain."""

    id: str
    what: str
    args: tuple[str, ...]
    expect: str


CASES: tuple[Case, ...] = (
    Case("method", "unknown method", ("run", "--method", "ermm", *SYN), "unknown method 'ermm'. Did you mean 'erm'?"),
    Case("noise", "unknown noise", ("run", "--noise", "symm40", *SYN), "unknown noise 'symm'. Did you mean 'sym'?"),
    Case("dataset", "unknown dataset", ("run", "--dataset", "synthetc"),
         "unknown dataset 'synthetc'. Did you mean 'synthetic'?"),
    Case("model", "unknown model", ("run", *SYN, "--model", "mlpp"), "unknown model 'mlpp'. Did you mean 'mlp'?"),
    Case("sym-5", "negative noise rate", ("run", *SYN, "--noise", "sym-5"),
         "noise rate -5% in 'sym-5' is outside [0, 100)"),
    Case("sym100", "noise rate of 100%", ("run", *SYN, "--noise", "sym100"),
         "noise rate 100% in 'sym100' is outside [0, 100)"),
    Case("sym95", "sym rate above (C-1)/C on 10 classes",
         ("run", *SYN, "--data-opt", "num_classes=10", "--noise", "sym95"),
         "sym rate 95% exceeds (C-1)/C = 90.0% for 10 classes"),
    Case("asym", "asym noise on a dataset without a class map", ("run", *SYN, "--noise", "asym40"),
         "asym noise needs a class map, and dataset 'synthetic' defines none"),
    Case("meta-big", "meta set larger than the classes allow", ("run", *SYN, "--meta-size", "5000"),
         "meta size 5000 needs 1250 samples of class"),
    Case("meta-neg", "negative meta set size", ("run", *SYN, "--meta-size", "-1"),
         "--meta-size and --val-size must be non-negative"),
    Case("epochs0", "zero epochs", ("run", *SYN, "--epochs", "0"), "--epochs must be at least 1, got 0"),
    Case("seed-neg", "negative seed", ("run", *SYN, "--seed", "-1"), "Invalid value for '--seed'"),
    Case("seed-text", "non-numeric seed", ("run", *SYN, "--seed", "abc"), "Invalid value for '--seed'"),
    Case("data-opt-key", "unknown dataset option", ("run", *SYN, "--data-opt", "n_trian=400"),
         "unknown option 'n_trian' for dataset 'synthetic'. Did you mean 'n_train'? Valid: n_train"),
    Case("data-opt-type", "dataset option of the wrong type", ("run", *SYN, "--data-opt", "n_train=many"),
         "dataset 'synthetic': option n_train must be an integer, got 'many'"),
    Case("data-opt-shape", "dataset option of the wrong shape",
         ("run", "--dataset", "cifar10", "--data-root", "data/cifar", "--data-opt", "expected_sizes=5"),
         "dataset 'cifar10': option expected_sizes must be tuple or none, got 5"),
    Case("data-opt-range", "dataset option out of its range (10^8 input dimensions)",
         ("run", *SYN, "--data-opt", "dim=100000000"),
         "dataset 'synthetic': option dim must be in [1, 100000], got 100000000"),
    Case("momentum-neg", "negative momentum", ("run", *SYN, "--momentum", "-1"),
         "--momentum must be in [0, 1), got -1"),
    Case("wd-neg", "negative weight decay", ("run", *SYN, "--weight-decay", "-1"),
         "--weight-decay must be in [0, 1], got -1"),
    Case("lr-inf", "infinite learning rate", ("run", *SYN, "--lr", "inf"), "--lr must be finite, got inf"),
    Case("lr-nan", "learning rate NaN", ("run", *SYN, "--lr", "nan"), "--lr must be finite, got nan"),
    Case("ckpt-negative", "negative checkpoint interval", ("run", *SYN, "--checkpoint-every", "-1"),
         "Invalid value for '--checkpoint-every'"),
    Case("ckpt-nan", "NaN checkpoint interval", ("run", *SYN, "--checkpoint-every", "nan"),
         "Invalid value for '--checkpoint-every'"),
    Case("phases-width", "phases: a 10^9-wide network", ("phases", "--out", "ph", "--width", "1000000000"),
         "phases: width must be in [2, 65536], got 1000000000"),
    Case("phases-iter", "phases: 10^12 iterations", ("phases", "--out", "ph", "--iterations", "1000000000000"),
         "phases: iterations must be in [2, 1e+06], got 1000000000000"),
    Case("phases-lr", "phases: infinite step size", ("phases", "--out", "ph", "--lr", "inf"),
         "phases: lr must be finite, got inf"),
    Case("phases-mem", "phases: pool x width beyond memory", ("phases", "--out", "ph", "--n-train", "200000",
                                                               "--width", "65536"),
         "exceeds 200,000,000 elements"),
    Case("config-key", "unknown key in a --config file", ("run", "--config", "typo.toml"),
         "--config typo.toml: unknown key 'epoch'. Did you mean 'epochs'?"),
    Case("config-toml", "--config file that is not TOML", ("run", "--config", "broken.toml"),
         "--config broken.toml is not valid TOML"),
    Case("epochs-huge", "10^20 epochs", ("run", *SYN, "--epochs", "99999999999999999999"),
         "--epochs must be in [1, 10000], got 99999999999999999999"),
    Case("batch-huge", "batch size above 65536", ("run", *SYN, "--batch-size", "100000"),
         "--batch-size must be in [2, 65536], got 100000"),
    Case("seed-huge", "seed of 2^63", ("run", *SYN, "--seed", "9223372036854775808"),
         "--seed must be an integer in [0, 2^63), got 9223372036854775808"),
    Case("milestones-late", "step milestone after the last epoch",
         ("run", *SYN, "--schedule", "step", "--milestones", "5"),
         "--milestones must be strictly increasing epochs in [1, 3] (--epochs), got (5,)"),
    Case("milestones-order", "step milestones out of order",
         ("run", *SYN, "--epochs", "5", "--schedule", "step", "--milestones", "3,2"),
         "--milestones must be strictly increasing epochs in [1, 5] (--epochs), got (3, 2)"),
    Case("noise-digits", "noise rate in non-ASCII digits", ("run", *SYN, "--noise", "sym\u0664\u0660"),
         "noise spec 'sym\u0664\u0660' must be ASCII letters, digits and '-' (e.g. sym40)"),
    Case("claim-ttl", "claim TTL of 0 seconds (grid)",
         ("grid", "--methods", "erm", "--noises", "sym40", *SYN, "--claim-ttl", "0"),
         "--claim-ttl must be a finite number of seconds >= 10, got 0.0"),
    Case("claim-ttl-nan", "claim TTL NaN (results check)", ("results", "check", "--claim-ttl", "nan"),
         "--claim-ttl must be a finite number of seconds >= 10, got nan"),
    Case("opt-huge", "method option out of its range (10^11 hidden units)",
         ("run", *SYN, "--method", "mwnet", "--opt", "hidden=100000000000"),
         "method 'mwnet': option hidden must be in [1, 10000], got 100000000000"),
    Case("opt-inf", "infinite method option", ("run", *SYN, "--method", "gce", "--opt", "q=inf"),
         "method 'gce': option q must be finite, got 'inf'"),
    Case("noise-decimals", "noise rate with more than 2 decimals", ("run", *SYN, "--noise", "sym40.0001"),
         "noise rate in 'sym40.0001' has more than 2 decimals"),
    Case("noise-long", "noise spec of 5000 characters", ("run", *SYN, "--noise", "sym" + "0" * 4995 + "40"),
         "--noise must be a name (a non-empty string of at most 200 printable characters)"),
    Case("noise-spec-long", "noise spec of 65 characters", ("run", *SYN, "--noise", "sym" + "0" * 60 + "40"),
         "is too long (at most 40 characters)"),
    Case("workers-huge", "100000 local workers (grid)",
         ("grid", "--methods", "erm", "--noises", "sym40", *SYN, "--workers", "100000"),
         "--workers must be at most 512 (one training process each), got 100000"),
    Case("cpus-nan", "CPUs per run NaN (grid)",
         ("grid", "--methods", "erm", "--noises", "sym40", *SYN, "--cpus-per-run", "nan"),
         "--cpus-per-run must be positive and finite, at most 1024, got nan"),
    Case("root", "data root that does not exist", ("run", "--dataset", "fashion-mnist", "--data-root", "data/nope"),
         "data root 'data/nope' does not exist or is not a directory"),
    Case("idx-truncated", "truncated IDX file",
         ("run", "--dataset", "fashion-mnist", "--data-root", "data/fmnist-truncated"),
         "truncated data file data/fmnist-truncated/train-images-idx3-ubyte.gz"),
    Case("idx-magic", "IDX file with the wrong magic number",
         ("run", "--dataset", "fashion-mnist", "--data-root", "data/fmnist-magic"),
         "data file data/fmnist-magic/train-images-idx3-ubyte.gz has wrong magic number 0x903"),
    Case("cifar-n-keys", "CIFAR-N file lacking label keys",
         ("noise", "show", "cifar10n-worst", "--dataset", "cifar10", "--data-root", "data/cifar", "--data-opt",
          "expected_sizes=[15,3]", "--meta-size", "0"),
         "CIFAR-N file data/cifar/cifar-n/CIFAR-10_human.pt lacks keys worse_label, random_label1"),
    Case("cifar-n-nested", "CIFAR-N file of memo-shared nested lists (2**40 labels once flattened)",
         ("noise", "show", "cifar10n-worst", "--dataset", "cifar10", "--data-root", "data/cifar-nested", "--data-opt",
          "expected_sizes=[15,3]", "--meta-size", "0"),
         "CIFAR-N file data/cifar-nested/cifar-n/CIFAR-10_human.pt refused by the safe loader (lists or dicts "
         "nested deeper than 8 levels)"),
    Case("cifar-n-shape", "CIFAR-N file asking numpy for an 8 TiB array",
         ("noise", "show", "cifar10n-worst", "--dataset", "cifar10", "--data-root", "data/cifar-shape", "--data-opt",
          "expected_sizes=[15,3]", "--meta-size", "0"),
         "refused by the safe loader (an array of shape (1099511627776,) needs 8192.0 GiB"),
    Case("cifar-batch-shape", "CIFAR batch asking numpy for an 8 TiB array",
         ("noise", "show", "sym20", "--dataset", "cifar10", "--data-root", "data/cifar-batch-shape", "--data-opt",
          "expected_sizes=[15,3]", "--meta-size", "0"),
         "refused or corrupted CIFAR pickle data/cifar-batch-shape/cifar-10-batches-py/data_batch_1 (an array of "
         "shape (1099511627776,) needs 8192.0 GiB"),
    Case("results-run", "results folder that cannot be written (run)",
         ("run", *SYN, "--results-dir", "not-a-dir/results"),
         "cannot write to not-a-dir/results/runs: Not a directory"),
    Case("results-grid", "results folder that cannot be written (grid)",
         ("grid", "--methods", "erm", "--noises", "sym40", *SYN, "--results-dir", "not-a-dir/results"),
         "cannot write to not-a-dir/results/runs/.claims: Not a directory"),
    Case("config-method-type", "--config file whose method is a number", ("run", "--config", "method-number.toml"),
         "--config method-number.toml: --method must be a name (a non-empty string of at most 200 printable "
         "characters), got 5"),
    Case("config-augment-type", "--config file whose augment is a string", ("run", "--config", "augment-text.toml"),
         "--config augment-text.toml: --augment must be true or false, got 'no'"),
    Case("config-options-type", "--config file whose method_options is a string",
         ("run", "--config", "options-text.toml"),
         "--config options-text.toml: method_options must be a table of key = value (--opt key=value), got "
         "'q=0.1'"),
    Case("config-record-options", "--config file with a misspelt record option",
         ("run", "--config", "record-typo.toml"),
         "--config record-typo.toml: unknown record option 'feature_epoch'. Did you mean 'feature_epochs'?"),
    Case("config-fifo", "--config that is a FIFO (reading it would wait forever)", ("run", "--config", "fifo.toml"),
         "--config fifo.toml is a FIFO, not a regular file"),
    Case("config-deep", "--config file nested 1000 levels deep", ("run", "--config", "deep.toml"),
         "--config deep.toml is nested too deeply"),
    Case("augment-vectors", "--augment on a dataset that is not images", ("run", "--augment", *SYN),
         "--augment needs an image dataset; 'synthetic' has inputs of shape (16,)"),
    Case("grid-opt-nobody", "grid --opt that no listed method takes",
         ("grid", "--methods", "erm", "--noises", "sym40", *SYN, "--opt", "q=0.1"),
         "no listed method takes the method option 'q'"),
    Case("grid-file-key", "grid file with an unknown key", ("grid", "--config", "grid-typo.toml"),
         "grid-typo.toml: grid 'mine': unknown key 'method'. Did you mean 'methods'?"),
)
#: Commands longer than this many characters are shown shortened in the table (their start, "…", their length).
MAX_SHOWN_COMMAND = 200


# ------------------------------------------------------------------------------------------- fake data


def _idx(array: np.ndarray, magic: int | None = None, truncate: int = 0) -> bytes:
    """A gzipped IDX ubyte file (big-endian magic 0x0800 | ndim, big-endian dims, raw bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()
    return gzip.compress(raw[:len(raw) - truncate], mtime=0)


def _write_fmnist(folder: Path, *, magic: int | None = None, truncate: int = 0) -> None:
    """Ten fake images per split; the training images get the fault (it is the first file the loader reads)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = rng.integers(0, 256, (10, 28, 28)), np.arange(10)
        fault = {"magic": magic, "truncate": truncate} if split == "train" else {}
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images, **fault))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))


class _Reduce:
    """Pickles as ``func(*args)``: how a hostile file asks an allowed numpy callable for something huge."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _huge_array() -> _Reduce:
    """numpy's array reconstructor asked for 2**40 float64 (8 TiB)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _Reduce(_reconstruct, np.ndarray, (2**40,), b"f8")


def _nested_lists(depth: int = 40) -> list:
    """A few hundred bytes pickled (the pickle memo shares each level), 2**depth labels once flattened."""
    x: list = [0]
    for _ in range(depth):
        x = [x, x]
    return x


def _write_cifar10(root: Path, per_batch: int = 3, first_labels: object = None) -> np.ndarray:
    """torchvision's cifar-10-batches-py layout: 5 x ``per_batch`` training images, ``per_batch`` test images;
    ``first_labels`` replaces the labels of the first batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = np.arange(6 * per_batch) % 10
    for i, name in enumerate([*(f"data_batch_{b}" for b in range(1, 6)), "test_batch"]):
        part = labels[i * per_batch:(i + 1) * per_batch]
        batch = {b"labels": part.tolist() if i or first_labels is None else first_labels,
                 b"data": np.zeros((per_batch, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return labels[:5 * per_batch]


def make_template(root: Path) -> Path:
    """Write the work folder every case starts from into ``root`` and return it."""
    import torch

    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.records import write_record

    root.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(method="erm", noise="sym40", dataset="synthetic", epochs=1)
    acc = 0.5
    write_record(root / "results", {
        "schema": 1, "run_name": cfg.run_name(), "config_hash": cfg.hash(), "method": cfg.method,
        "noise": cfg.noise, "dataset": cfg.dataset, "model": cfg.model, "seed": cfg.seed, "status": "ok",
        "config": cfg.to_dict(), "env": {}, "noise_report": {}, "wall_time_s": 1.0,
        "history": [{"epoch": 1, "test_acc": acc, "epoch_time_s": 1.0}],
        "final": {"last_acc": acc, "best_acc": acc, "last5_acc": acc}})
    _write_fmnist(root / "data" / "fmnist-truncated", truncate=100)
    _write_fmnist(root / "data" / "fmnist-magic", magic=0x0903)
    clean = _write_cifar10(root / "data" / "cifar")
    (root / "data" / "cifar" / "cifar-n").mkdir()
    torch.save({"clean_label": clean, "aggre_label": clean}, root / "data" / "cifar" / "cifar-n" / "CIFAR-10_human.pt")
    for name, worse in (("cifar-nested", _nested_lists()), ("cifar-shape", _huge_array())):
        clean = _write_cifar10(root / "data" / name)
        keys = ("clean_label", "aggre_label", "random_label1", "random_label2", "random_label3")
        (root / "data" / name / "cifar-n").mkdir()
        torch.save({**dict.fromkeys(keys, clean), "worse_label": worse},
                   root / "data" / name / "cifar-n" / "CIFAR-10_human.pt")
    _write_cifar10(root / "data" / "cifar-batch-shape", first_labels=_huge_array())
    (root / "not-a-dir").write_text("a plain file where a folder is expected\n")
    (root / "typo.toml").write_text("epoch = 3\n")
    (root / "broken.toml").write_text("epochs = [\n")
    (root / "method-number.toml").write_text("method = 5\n")
    (root / "augment-text.toml").write_text('augment = "no"\n')
    (root / "options-text.toml").write_text('method_options = "q=0.1"\n')
    (root / "record-typo.toml").write_text("record_options = {feature_epoch = [1]}\n")
    (root / "deep.toml").write_text("method_options = {a = " + "[" * 1000 + "]" * 1000 + "}\n")
    (root / "grid-typo.toml").write_text('[mine]\ndataset = "synthetic"\nmethod = ["erm"]\nnoises = ["sym40"]\n')
    return root  # fifo.toml is made in each case's copy (copying a FIFO would read it)


# ---------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    case: Case
    returncode: int
    stdout: str
    stderr: str
    results_unchanged: bool

    def problems(self) -> list[str]:
        """How this outcome breaks the contract (empty if it meets it)."""
        lines = self.stderr.splitlines()
        out = []
        if self.returncode != 2:
            out.append(f"exit code {self.returncode}, expected 2")
        if len(lines) != 1 or not lines[0].startswith("error:"):
            out.append(f"stderr is not one 'error:' line: {self.stderr[-300:]!r}")
        elif self.case.expect not in lines[0]:
            out.append(f"message lacks {self.case.expect!r}")
        if "Traceback" in self.stderr or self.stdout:
            out.append(f"traceback or stdout output: {self.stdout[-200:]!r}")
        if not self.results_unchanged:
            out.append("results/ changed")
        return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def nlbench_command() -> list[str]:
    """The ``nlbench`` console script of this interpreter's environment (``python -m nlbench.cli`` if the
    package is not installed as a script): the same ``main`` either way, but usage hints then say ``nlbench``."""
    script = Path(sys.executable).with_name("nlbench")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nlbench.cli"]


def run_case(case: Case, template: Path, workdir: Path, timeout: float = 120) -> Outcome:
    """Copy ``template`` to ``workdir`` and run ``nlbench *case.args`` there in a fresh interpreter."""
    shutil.copytree(template, workdir)
    if hasattr(os, "mkfifo"):
        os.mkfifo(workdir / "fifo.toml")
    before = _snapshot(workdir / "results")
    env = {k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}
    proc = subprocess.run([*nlbench_command(), *case.args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return Outcome(case, proc.returncode, proc.stdout, proc.stderr, _snapshot(workdir / "results") == before)


def run_all(cases: tuple[Case, ...] = CASES, jobs: int = 2) -> list[Outcome]:
    """Run ``cases`` (``jobs`` at a time) in fresh copies of a temporary work folder; results in case order."""
    with tempfile.TemporaryDirectory(prefix="nlbench-bad-input-") as tmp:
        template = make_template(Path(tmp) / "template")
        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(lambda c: run_case(c, template, Path(tmp) / c.id), cases))


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def shown_command(args: tuple[str, ...], limit: int = MAX_SHOWN_COMMAND) -> str:
    """``nlbench ARGS`` as a shell would take it; past ``limit`` characters, its start, "…" and its length
    (a 5,000-character argument would otherwise fill the page)."""
    cmd = "nlbench " + shlex.join(args)
    return cmd if len(cmd) <= limit else f"{cmd[:limit]}… ({len(cmd):,} characters)"


def render(outcomes: list[Outcome]) -> str:
    """The Markdown page: one row per case, the message as printed."""
    out = ["# Bad input: what nlbench says", "",
           "Generated by `.venv/bin/python benchmarks/bad_input_table.py` (rerun it to refresh this page). Each "
           "command ran in a folder holding fake data files (`data/`), one finished record (`results/`), a "
           "plain file `not-a-dir`, the `--config` and grid files the rows name and a FIFO `fifo.toml`. Commands "
           f"over {MAX_SHOWN_COMMAND} characters are shown shortened. Every one prints exactly one line on stderr "
           "and exits with code 2, without a traceback, and leaves the records in `results/` untouched; "
           "`tests/test_hardening.py` checks this for every row (for the rows `tests/test_cli.py` already checks "
           "in-process, with `pytest -m slow`).", "",
           "| bad input | command | what it prints (stderr) | exit code |", "|---|---|---|---|"]
    for o in outcomes:
        msg = " / ".join(o.stderr.splitlines()) or "(nothing)"
        out.append(f"| {o.case.what} | {_cell(shown_command(o.case.args))} | {_cell(msg)} | {o.returncode} |")
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DOC), help="Markdown file to write, or '-' for stdout.")
    parser.add_argument("--jobs", type=int, default=2, help="Commands run at once.")
    args = parser.parse_args()
    outcomes = run_all(jobs=args.jobs)
    text = render(outcomes)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"{len(outcomes)} bad inputs written to {args.out}", file=sys.stderr)
    bad = [(o.case.id, p) for o in outcomes for p in o.problems()]
    for case_id, problem in bad:
        print(f"contract broken by {case_id}: {problem}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
