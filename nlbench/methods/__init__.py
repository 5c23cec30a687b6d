"""Method registry.

A new method is one file with one decorator (see :mod:`nlbench.methods.base`): every module of this package is
imported when the package is, so dropping the file here registers it. Methods in other packages are
found through the ``nlbench.methods`` entry-point group: an entry point ``name = "pkg.module"`` (or
``"pkg.module:Class"``) is imported on first lookup, and its ``@register_method`` decorator does the rest.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from nlbench.errors import NLBenchError
from nlbench.methods.base import (
    METHODS,
    Batch,
    Method,
    MethodContext,
    StepOutput,
    TrainData,
    TrainSet,
    register_method,
)
from nlbench.options import bind_options

_PLUGINS_LOADED = False


def load_plugins() -> None:
    """Import every ``nlbench.methods`` entry point once; a broken plugin is a user-facing error."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="nlbench.methods"):
        try:
            ep.load()
        except Exception as e:  # a third-party import error must name the plugin, not crash the CLI
            raise NLBenchError(f"method plugin {ep.name!r} ({ep.value}) failed to load: {e}") from e


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names (plugins included), sorted."""
    load_plugins()
    return METHODS.list(pattern)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (or an alias); unknown names raise with a close match."""
    load_plugins()
    return METHODS.get(name)


def create_method(name: str, **options) -> Method:
    """An instance of method ``name`` with ``options`` validated from its ``__init__`` annotations."""
    cls = get_method(name)
    return cls(**bind_options(cls.__init__, options, f"method {cls.name!r}"))


def _import_builtin_methods() -> None:
    """Import every module of this package, so a new method is one file: its decorator registers it."""
    import importlib
    import pkgutil

    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        importlib.import_module(f"{__name__}.{info.name}")


_import_builtin_methods()

__all__ = ["METHODS", "Batch", "Method", "MethodContext", "StepOutput", "TrainData", "TrainSet",
           "create_method", "get_method", "list_methods", "load_plugins", "register_method"]
