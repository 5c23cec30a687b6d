"""Method registry.

A new method is one file with one decorator (see :mod:`nlbench.methods.base`): every module of this package is
imported when the package is, so dropping the file here registers it. Methods in other packages are
found through the ``nlbench.methods`` entry-point group: an entry point ``name = "pkg.module"`` (or
``"pkg.module:Class"``) is imported on first lookup, and its ``@register_method`` decorator does the rest.
"""

from __future__ import annotations

import contextlib
import sys
from importlib.metadata import entry_points

from nlbench.errors import UnknownNameError
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
#: method name -> "distribution==version" for every method an entry point registered (recorded in ``env``)
PLUGIN_DISTS: dict[str, str] = {}
#: entry-point name -> why it failed to load, for plugins that were skipped
FAILED_PLUGINS: dict[str, str] = {}


def load_plugins() -> None:
    """Import every ``nlbench.methods`` entry point once.

    A plugin whose import fails is skipped with one warning line on stderr that names it, so a broken
    third-party package never disables the built-in methods or the other plugins. The methods each plugin
    registered are remembered with its distribution and version (:func:`plugin_versions`).
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="nlbench.methods"):
        before = set(METHODS.list())
        snapshot = _registry_snapshot()
        try:
            ep.load()
            changed = _changed_methods(snapshot)
            if changed:
                raise _PluginRefused(f"it replaced or changed the already registered method(s) {', '.join(changed)}")
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001  (SystemExit from an import is a plugin failure, not an exit)
            # a failed plugin provides nothing: whatever it registered or replaced is undone
            _restore_registry(snapshot)
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, SystemExit):
                why = f"it raised SystemExit({e.code!r}) on import"
            FAILED_PLUGINS[ep.name] = why[:300]
            print(f"warning: method plugin {ep.name!r} ({ep.value}) failed to load: {why[:300]}", file=sys.stderr)
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{dist.name}=={dist.version}" if dist is not None else ep.value
        # the methods this entry point registered; a module imported earlier registers nothing new, so fall
        # back to the entry point's name when it names a method
        new = set(METHODS.list()) - before or ({ep.name} if ep.name in METHODS else set())
        for name in new:
            PLUGIN_DISTS[METHODS.canonical(name)] = origin


class _PluginRefused(Exception):
    """A plugin that changed a method registered before it (a built-in or another plugin's)."""


def _registry_snapshot() -> tuple[dict, dict, dict]:
    """The method registry's entries and aliases, and each registered class's own attributes, so that what a
    plugin changes can be found and undone."""
    items = dict(METHODS._items)
    return items, dict(METHODS._aliases), {name: dict(vars(cls)) for name, cls in items.items()}


def _changed_methods(snapshot: tuple[dict, dict, dict]) -> list[str]:
    """Methods registered before the snapshot that are now missing, another object, or a class whose own
    attributes (``step``, ``oracle``, ...) were replaced: a plugin may add methods, never alter others."""
    items, aliases, attrs = snapshot
    changed = [name for name, obj in items.items()
               if METHODS._items.get(name) is not obj or dict(vars(obj)) != attrs[name]]
    changed += [a for a, target in aliases.items() if METHODS._aliases.get(a) != target]
    return sorted(set(changed))


def _restore_registry(snapshot: tuple[dict, dict, dict]) -> None:
    items, aliases, attrs = snapshot
    METHODS._items.clear()
    METHODS._items.update(items)
    METHODS._aliases.clear()
    METHODS._aliases.update(aliases)
    for name, cls in items.items():
        now = dict(vars(cls))
        if now == attrs[name]:
            continue
        for key in now.keys() - attrs[name].keys():
            with contextlib.suppress(AttributeError, TypeError):
                delattr(cls, key)
        for key, value in attrs[name].items():
            if now.get(key, _ABSENT) is not value:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(cls, key, value)


_ABSENT = object()


def plugin_versions() -> dict[str, str]:
    """``{method name: "distribution==version"}`` for the methods that came from entry points (sorted)."""
    load_plugins()
    return dict(sorted(PLUGIN_DISTS.items()))


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names (plugins included), sorted."""
    load_plugins()
    return METHODS.list(pattern)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (or an alias); unknown names raise with a close match (and name
    the plugins that failed to load, one of which may have provided it)."""
    load_plugins()
    try:
        return METHODS.get(name)
    except UnknownNameError as e:
        if not FAILED_PLUGINS:
            raise
        raise UnknownNameError(f"{e} (method plugin(s) that failed to load: {', '.join(sorted(FAILED_PLUGINS))})"
                               ) from None


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
           "create_method", "get_method", "list_methods", "load_plugins", "plugin_versions", "register_method"]
