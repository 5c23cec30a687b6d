"""Portable numerics: CPU kernels pinned to one instruction set, so a run gives the same bits on any x86-64 CPU.

Three libraries pick their CPU kernels by what the processor supports, and each pick changes the order of
floating-point operations, hence the last bits of every result, which training amplifies:

- ATen's vectorised kernels (softmax, reductions, elementwise maths) dispatch on ``ATEN_CPU_CAPABILITY``
  (AVX512 where present, else AVX2, ...);
- MKL's GEMM (every ``nn.Linear``, the im2col convolution) follows its *conditional numerical reproducibility*
  branch, ``MKL_CBWR``. MKL's documentation says that the ``AVX2`` branch holds only on Intel CPUs (others fall
  back to the ``AUTO`` branch, as measured on this project's AMD EPYC: AVX2 == AUTO there), so the portable
  branch is ``COMPATIBLE`` (SSE2 without rcpps/rsqrtps), the one MKL documents as the same on every x86-64 CPU;
- oneDNN's JIT convolutions choose an ISA (``ONEDNN_MAX_CPU_ISA``) and block sizes from the caches of the CPU.
  Portable mode turns oneDNN (and NNPACK) off for the run, so convolutions go through ATen's im2col + MKL GEMM
  on the COMPATIBLE branch; ``ONEDNN_MAX_CPU_ISA=AVX2`` is set as well for any oneDNN call that remains.

Every pin is an environment variable read once, when the library first runs a kernel (measured with torch
2.14: setting them after ``import torch`` but before the first operation still takes effect; after any CPU
operation they are ignored). So portable mode must be switched on before the process computes anything:
``NLBENCH_PORTABLE=1`` in the environment (``import nlbench`` applies it, before torch loads), or
:func:`enable` (``nlbench run --portable`` and grid workers call it first thing). :func:`check` (called when
a run starts) confirms that the pins took effect and refuses the run otherwise, and :func:`state` is what a
record's ``env`` notes (``portable`` and ``numerics_pins``).

The promise (see the README, "Reliability"): on x86-64 CPUs with AVX2, with the same torch build, the same
torch thread count and the same nlbench code, a portable run's history is the same bit for bit. Thread counts
still matter: ATen splits reductions by thread, and MKL's CNR mode holds for a fixed number of threads.

This module must not import torch at module level.
"""

from __future__ import annotations

import os
import sys

from nlbench.errors import NLBenchError

#: Environment variable that switches portable mode on (``1``, ``true``, ``yes`` or ``on``).
ENV_FLAG = "NLBENCH_PORTABLE"
#: The instruction set the portable mode pins ATen (and oneDNN, where it still runs) to.
PORTABLE_ISA = "AVX2"
#: Environment variable -> value, each read by its library before its first kernel runs.
PINS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
}
_TRUE = ("1", "true", "yes", "on")


def requested(environ: dict[str, str] | None = None) -> bool:
    """Whether ``NLBENCH_PORTABLE`` asks for portable mode."""
    return (os.environ if environ is None else environ).get(ENV_FLAG, "").strip().lower() in _TRUE


def enable() -> None:
    """Switch portable mode on for this process and the processes it starts (grid workers inherit the
    environment). Takes effect only if torch has run no CPU kernel yet; :func:`check` says whether it did."""
    os.environ[ENV_FLAG] = "1"
    os.environ.update(PINS)
    if "torch" in sys.modules:
        _disable_onednn()


def _disable_onednn() -> None:
    import torch

    torch.backends.mkldnn.enabled = False
    torch.backends.nnpack.set_flags(False)


def _cpu_has_avx2() -> bool | None:
    """Whether /proc/cpuinfo lists AVX2 and FMA (None where there is no /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        return None
    return False


def check() -> None:
    """Make the pins hold for the run about to start, or raise :class:`NLBenchError` saying why they cannot.

    Without ``NLBENCH_PORTABLE`` this does nothing. With it, the pins are (re)applied, oneDNN and NNPACK are
    turned off, and torch's CPU capability must read ``AVX2``: anything else means torch chose its kernels
    before the pins were set (or the CPU has no AVX2), and a record claiming portable numerics would lie."""
    if not requested():
        return
    import platform

    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64") or _cpu_has_avx2() is False:
        raise NLBenchError(f"portable mode needs an x86-64 CPU with AVX2 and FMA; this one is {machine or '?'} "
                           "without them (unset NLBENCH_PORTABLE / drop --portable)")
    enable()
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    wrong = {k: os.environ.get(k) for k, v in PINS.items() if os.environ.get(k) != v}
    if cap != PORTABLE_ISA or wrong:
        raise NLBenchError(f"portable mode could not take effect: torch already runs {cap} kernels"
                           + (f" and {', '.join(f'{k}={v}' for k, v in wrong.items())} is set" if wrong else "")
                           + f"; set {ENV_FLAG}=1 in the environment before starting Python, or call "
                           "nlbench.portable.enable() before torch computes anything")


def state() -> dict:
    """What a record's ``env`` notes: ``portable`` (true only when every pin holds in this process) and
    ``numerics_pins`` (the pinning variables as set, ``None`` where unset, and whether oneDNN was on)."""
    pins: dict[str, object] = {k: os.environ.get(k) for k in PINS}
    holds = requested() and all(os.environ.get(k) == v for k, v in PINS.items())
    if "torch" in sys.modules:
        import torch

        pins["onednn_enabled"] = bool(torch.backends.mkldnn.enabled)
        holds = holds and torch.backends.cpu.get_cpu_capability() == PORTABLE_ISA \
            and not torch.backends.mkldnn.enabled
    return {"portable": bool(holds), "numerics_pins": pins}


def apply_from_environment() -> None:
    """Apply ``NLBENCH_PORTABLE`` from the environment (``import nlbench`` calls this, before torch loads)."""
    if requested():
        os.environ.update(PINS)
