"""A strict name -> object registry shared by methods, noises, datasets, models and presets.

Follows torchvision's ``_api.py``: registering a taken name raises, and an unknown name raises with the list
of valid names and the closest match (as cleanlab's factories do).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from nlbench.errors import UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories (or classes) of one kind, e.g. ``Registry("method")``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")``. Raises ``ValueError`` if the name or an alias is taken."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}")
            for k in (key, *aliases):
                if k in self._items or k in self._aliases:
                    raise ValueError(f"{self.kind} {k!r} is already registered")
            self._items[key] = obj
            for a in aliases:
                self._aliases[a] = key
            return obj

        return deco

    def add(self, name: str, obj: T, *, aliases: tuple[str, ...] = ()) -> T:
        """Register ``obj`` under ``name`` without the decorator syntax."""
        return self.register(name, aliases=aliases)(obj)

    def canonical(self, name: str) -> str:
        """Resolve an alias to its canonical name; raise :class:`UnknownNameError` if unknown."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        valid = sorted(self._items)
        hint = did_you_mean(name, valid + sorted(self._aliases))
        raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(valid)}")

    def get(self, name: str) -> T:
        """The object registered under ``name`` (or an alias of it)."""
        return self._items[self.canonical(name)]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted canonical names matching the fnmatch ``pattern``."""
        return sorted(k for k in self._items if fnmatch.fnmatch(k, pattern))

    def aliases(self, name: str) -> list[str]:
        return sorted(a for a, k in self._aliases.items() if k == name)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._items)
