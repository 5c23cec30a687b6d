"""The run's environment: device selection, seeded generators, and what a record notes about the machine.

:func:`select_device` resolves ``--device``; :func:`seed_int` / :func:`make_generator` derive the independent
random streams of a run (init, shuffle, method, augmentation) from its seed; :func:`environment` and
:func:`cpu_numerics` are the ``env`` of a record (versions, hardware, BLAS/oneDNN builds, git commit), which is
not part of the config hash.
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import torch

import nlbench
from nlbench.errors import NLBenchError
from nlbench.methods import plugin_versions
from nlbench.portable import state as portable_state


def select_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NLBenchError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NLBenchError("--device cuda was asked for, but no CUDA device is available")
    return dev


def seed_int(*parts: int) -> int:
    """A 63-bit seed derived from integers, so streams (init, shuffle, method, noise) never collide."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def make_generator(device: torch.device, *parts: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_int(*parts))
    return g


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(nlbench.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_numerics() -> dict:
    """What CPU results depend on beyond the code and the seed: the CPU model and its vector ISA flags, the
    kernel level torch dispatches to, and the BLAS and oneDNN builds. Two machines that differ here may give
    different floating-point results from the same command (the README says which determinism holds)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key.strip() == "flags":
                    have = set(value.split())
                    flags = [fl for fl in _ISA_FLAGS if fl in have]
                    break
    except OSError:  # not Linux: the model from platform is all there is
        pass
    config = torch.__config__.show()

    def find(pattern: str) -> str | None:
        m = re.search(pattern, config)
        return m.group(1).strip() if m else None

    return {"cpu_model": model, "cpu_flags": flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "blas": find(r"BLAS_INFO=(\w+)"), "mkl": find(r"Math Kernel Library Version ([^\n]+?)-Product"),
            "onednn": find(r"MKL-DNN (v[\d.]+)")}


def environment(device: torch.device) -> dict:
    """Versions and hardware a record was made with (for reproducibility, not part of the config hash)."""
    return {
        "nlbench": nlbench.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "threads": torch.get_num_threads(), "git_sha": _git_sha(),
        # GPU results depend on the CUDA/cuDNN kernels as much as on torch: None on CPU-only builds and devices
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        **cpu_numerics(),
        # portable numerics (nlbench.portable): whether the CPU kernels were pinned to one ISA, and the pins
        **portable_state(),
        "plugins": plugin_versions(),  # {method: "dist==version"} of methods from entry points
    }
