"""Grid specs: methods x noises x seeds (plus extra rows) over one base protocol.

:class:`GridSpec` / :func:`expand` / :func:`load_grid` give the configs in a deterministic order, with canonical
names so a config hashes like the record it produces. Named grids live in ``nlbench/grids.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from nlbench.benchmark.config import METHOD_DEFAULTS, PRESETS, RunConfig
from nlbench.errors import NLBenchError

GRIDS_FILE = "grids.toml"


@dataclass
class GridRow:
    """An extra block of a grid, e.g. ``erm`` on ``clean`` for the leaderboard's clean reference. ``overrides``
    are RunConfig fields that differ from the grid's base protocol (rarely needed)."""

    name: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSpec:
    """A named grid: ``methods x noises x seeds`` on one dataset and one base protocol, plus extra rows.

    ``methods`` may be ``("all",)``: every registered method at expansion time (plugins included). The
    protocol fields left ``None`` take :class:`RunConfig` defaults; ``overrides`` sets any other RunConfig
    field (``dataset_options``, ``schedule``, ``val_size``, ...) for every run of the grid.
    """

    name: str
    dataset: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int | None = None
    model: str | None = None
    meta_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: tuple[GridRow, ...] = ()
    #: methods left out of ``"all"`` in the main block (e.g. because an extra row runs them with options)
    exclude: tuple[str, ...] = ()
    #: per-method options of the protocol (a preset's ``method_defaults``), under each row's ``method_options``
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base(self) -> dict[str, Any]:
        """RunConfig keyword arguments shared by every run of the grid."""
        out = {"dataset": self.dataset, **self.overrides}
        for key in ("epochs", "model", "meta_size", "batch_size", "lr"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


_CONFIG_FIELDS = {f.name for f in fields(RunConfig)}
# per-run identity fields: a grid's base protocol may not set them
_PER_RUN = {"method", "noise", "seed"}


def _check_overrides(where: str, overrides: dict[str, Any]) -> None:
    bad = sorted(set(overrides) - (_CONFIG_FIELDS - _PER_RUN))
    if bad:
        raise NLBenchError(f"{where}: unknown or per-run config keys {bad}; "
                           f"valid: {', '.join(sorted(_CONFIG_FIELDS - _PER_RUN))}")


def canonical_methods(methods: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Canonical method names, ``"all"`` expanded to every registered method but those in ``exclude``,
    duplicates (``fbr`` and ``surrogate``) dropped, first occurrence kept."""
    from nlbench.methods import get_method, list_methods

    left_out = {get_method(name).name for name in exclude}
    out: list[str] = []
    for name in methods:
        for canon in ([m for m in list_methods() if m not in left_out] if name == "all" else [get_method(name).name]):
            if canon not in out:
                out.append(canon)
    return out


def _configs(base: dict[str, Any], methods, noises, seeds,
             method_defaults: dict[str, dict[str, Any]]) -> Iterator[RunConfig]:
    from nlbench.benchmark.config import preset_method_options
    from nlbench.benchmark.harness import canonical_config

    # Seed-major order: an interrupted grid leaves complete seeds behind, so a leaderboard built from a
    # partial grid already compares every method on the same seeds.
    for seed in seeds:
        for noise in noises:
            for method in methods:
                options = {**preset_method_options(method_defaults, method), **base.get("method_options", {})}
                yield canonical_config(RunConfig(**{**base, "method": method, "noise": noise, "seed": int(seed),
                                                    "method_options": options}))


def expand(spec: GridSpec) -> list[RunConfig]:
    """The grid's configs in a deterministic order: the main block seed-major (seed, then noise, then method
    in the order given), then each extra row in the same way. Names are canonical (aliases resolved, noise
    specs normalised, every name checked, so typos fail before anything runs); a config that appears twice
    (e.g. ``erm`` on ``clean`` in both the main block and an extra row) is kept once, at its first place."""
    _check_overrides(f"grid {spec.name!r}", spec.overrides)
    if not spec.seeds:
        raise NLBenchError(f"grid {spec.name!r} has no seeds")
    blocks = [(spec.base(), canonical_methods(spec.methods, spec.exclude), spec.noises, spec.seeds)]
    for row in spec.extra:
        _check_overrides(f"grid {spec.name!r} row {row.name!r}", row.overrides)
        blocks.append(({**spec.base(), **row.overrides}, canonical_methods(row.methods), row.noises, row.seeds))
    out: list[RunConfig] = []
    seen: set[str] = set()
    for base, methods, noises, seeds in blocks:
        for cfg in _configs(base, methods, noises, seeds, spec.method_defaults):
            if cfg.hash() not in seen:
                seen.add(cfg.hash())
                out.append(cfg)
    return out


def _tuple(value: Any, key: str, where: str, kind: type) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise NLBenchError(f"{where}: {key} must be a list of {kind.__name__}, got {value!r}")
    return tuple(value)


def parse_grid(name: str, table: dict[str, Any]) -> GridSpec:
    """A :class:`GridSpec` from one TOML table (see ``nlbench/grids.toml`` for the format)."""
    where = f"grid {name!r}"
    table = dict(table)
    try:
        dataset = table.pop("dataset")
        methods = _tuple(table.pop("methods"), "methods", where, str)
        noises = _tuple(table.pop("noises"), "noises", where, str)
        seeds = _tuple(table.pop("seeds"), "seeds", where, int)
    except KeyError as e:
        raise NLBenchError(f"{where} lacks the key {e.args[0]!r}") from None
    extra = []
    for i, row in enumerate(table.pop("extra", [])):
        rw = f"{where} extra row {i}"
        row = dict(row)
        try:
            extra.append(GridRow(name=str(row.pop("name", f"row{i}")),
                                 methods=_tuple(row.pop("methods"), "methods", rw, str),
                                 noises=_tuple(row.pop("noises"), "noises", rw, str),
                                 seeds=_tuple(row.pop("seeds", list(seeds)), "seeds", rw, int), overrides=row))
        except KeyError as e:
            raise NLBenchError(f"{rw} lacks the key {e.args[0]!r}") from None
    protocol = {k: table.pop(k) for k in ("epochs", "model", "meta_size", "batch_size", "lr") if k in table}
    exclude = _tuple(table.pop("exclude", []), "exclude", where, str)
    table.pop("description", None)
    preset = table.pop("preset", None)
    method_defaults = table.pop(METHOD_DEFAULTS, {})
    if not isinstance(method_defaults, dict) or not all(isinstance(v, dict) for v in method_defaults.values()):
        raise NLBenchError(f"{where}: {METHOD_DEFAULTS} must map method names to option tables")
    if preset is not None:  # a named protocol: its values under the grid's own keys
        values = dict(PRESETS.get(str(preset)))
        method_defaults = {**values.pop(METHOD_DEFAULTS, {}), **method_defaults}
        if values.pop("dataset", dataset) != dataset:
            raise NLBenchError(f"{where}: preset {preset!r} is for another dataset")
        for key in ("epochs", "model", "meta_size", "batch_size", "lr"):
            if key in values:
                protocol.setdefault(key, values.pop(key))
        table = {**values, **table}
    return GridSpec(name=name, dataset=dataset, methods=methods, noises=noises, seeds=seeds, overrides=table,
                    extra=tuple(extra), exclude=exclude, method_defaults=method_defaults, **protocol)


def named_grids(path: str | os.PathLike | None = None) -> dict[str, GridSpec]:
    """Every grid defined in ``path`` (default: the ``grids.toml`` shipped with nlbench), by name."""
    try:
        text = Path(path).read_text() if path is not None else \
            resources.files("nlbench").joinpath(GRIDS_FILE).read_text()
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise NLBenchError(f"cannot read grid file {path or GRIDS_FILE}: {e}") from None
    return {name: parse_grid(name, table) for name, table in data.items()}


def load_grid(name: str, path: str | os.PathLike | None = None) -> GridSpec:
    """The named grid; unknown names raise with the valid list."""
    grids = named_grids(path)
    if name not in grids:
        raise NLBenchError(f"unknown grid {name!r}; valid: {', '.join(sorted(grids))}")
    return grids[name]
