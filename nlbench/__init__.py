"""nlbench: a benchmark suite for learning with noisy labels.

The Python API (see the README, "Python API") loads on first use, so ``import nlbench`` stays cheap:

- :func:`load_records` ``(results_dir) -> pandas.DataFrame``: one row per valid run record, in percent;
- :func:`train` ``(RunConfig(...), results_dir=..., device=..., progress=...)``: train one setting, return its
  record; :class:`RunConfig`: the configuration of one run;
- :func:`list_methods`, :func:`list_noises`, :func:`list_datasets`, :func:`list_models`, :func:`list_presets`;
- :mod:`nlbench.testing`: ``check_method(name)`` for method authors' tests.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Portable numerics (NLBENCH_PORTABLE=1) pin CPU kernels through environment variables that torch, MKL and
# oneDNN read once: apply them now, before anything imports torch (see nlbench.portable).
from nlbench.portable import apply_from_environment as _apply_portable  # noqa: E402

_apply_portable()

#: public name -> (module, attribute); imported on first access (PEP 562)
_LAZY = {
    "load_records": ("nlbench.api", "load_records"),
    "list_methods": ("nlbench.api", "list_methods"),
    "list_noises": ("nlbench.api", "list_noises"),
    "list_datasets": ("nlbench.api", "list_datasets"),
    "list_models": ("nlbench.api", "list_models"),
    "list_presets": ("nlbench.api", "list_presets"),
    "train": ("nlbench.benchmark.harness", "train"),
    "RunConfig": ("nlbench.benchmark.config", "RunConfig"),
    "NLBenchError": ("nlbench.errors", "NLBenchError"),
    "testing": ("nlbench.testing", None),
}

if TYPE_CHECKING:
    from nlbench import testing
    from nlbench.api import list_datasets, list_methods, list_models, list_noises, list_presets, load_records
    from nlbench.benchmark.config import RunConfig
    from nlbench.benchmark.harness import train
    from nlbench.errors import NLBenchError


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'nlbench' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["NLBenchError", "RunConfig", "__version__", "list_datasets", "list_methods", "list_models", "list_noises",
           "list_presets", "load_records", "testing", "train"]
