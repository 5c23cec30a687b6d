"""Grid specs: methods x noises x seeds (plus extra rows) over one base protocol.

:class:`GridSpec` / :func:`expand` / :func:`load_grid` give the configs in a deterministic order, with canonical
names so a config hashes like the record it produces. Named grids live in ``nlbench/grids.toml``.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from nlbench.benchmark.config import (
    METHOD_DEFAULTS,
    OPTION_DICTS,
    PER_RUN,
    PRESETS,
    RunConfig,
    check_keys,
    read_toml,
)
from nlbench.errors import NLBenchError, did_you_mean

GRIDS_FILE = "grids.toml"
METHOD_OPTIONS = "method_options"
_CONFIG_FIELDS = [f.name for f in fields(RunConfig)]
#: the RunConfig keys a grid, one of its rows or a sweep may set (not PER_RUN: each run has its own)
PROTOCOL_KEYS = tuple(k for k in _CONFIG_FIELDS if k not in PER_RUN)
#: protocol keys that GridSpec keeps as attributes (the others live in ``overrides``)
_NAMED = ("epochs", "model", "meta_size", "batch_size", "lr")
#: the keys of a grid table beside the protocol keys
GRID_KEYS = ("description", "dataset", "methods", "noises", "seeds", "preset", "exclude", "extra", METHOD_DEFAULTS,
             "sweep")
#: the keys of an extra row beside the protocol keys
ROW_KEYS = ("name", "methods", "noises", "seeds")


@dataclass
class GridRow:
    """An extra block of a grid, e.g. ``erm`` on ``clean`` for the leaderboard's clean reference. ``overrides``
    are RunConfig fields that differ from the grid's base protocol (its ``method_options`` apply to every method
    of the row that takes them); ``seeds`` ``None`` takes the grid's."""

    name: str
    methods: tuple[str, ...]
    noises: tuple[str, ...]
    seeds: tuple[int, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridSpec:
    """A grid: ``methods x noises x seeds`` (x the values of ``sweep``) on one base protocol, plus extra rows.

    ``methods`` may be ``("all",)``: every registered method at expansion time (plugins included). The base
    protocol is that of ``preset`` (``None``: RunConfig's defaults) with the grid's own values on top: ``dataset``
    (``None``: the preset's or the default), the attributes ``epochs`` ... ``lr``, and ``overrides``, any other
    RunConfig field (``dataset_options``, ``schedule``, ``val_size``, ...). The grid's ``method_options`` apply
    to every method that takes them (a main-block method that takes none of them is an error, which names it);
    ``method_defaults`` gives per-method options. ``sweep`` maps dotted config keys (``meta_size``,
    ``method_options.alpha``) to the values each run is repeated with (every combination), so the runs form a
    sweep that ``nlbench table --by KEY`` lays out. Each run's config is ``RunConfig.from_preset(preset, ...)``,
    as ``nlbench run`` builds it, so a run hashes alike whichever way it is reached.
    """

    name: str
    dataset: str | None = None
    methods: tuple[str, ...] = ()
    noises: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    epochs: int | None = None
    model: str | None = None
    meta_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    extra: tuple[GridRow, ...] = ()
    #: methods left out of ``"all"`` in the main block (e.g. because an extra row runs them with options)
    exclude: tuple[str, ...] = ()
    #: per-method options of the protocol, under each row's ``method_options`` (the preset's, under these)
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: a named protocol whose values the grid takes unless it sets them itself
    preset: str | None = None
    #: dotted config key -> the values it sweeps
    sweep: dict[str, tuple] = field(default_factory=dict)

    def base(self) -> dict[str, Any]:
        """RunConfig keyword arguments shared by every run of the grid (on top of the preset's)."""
        out = {} if self.dataset is None else {"dataset": self.dataset}
        out.update(self.overrides)
        for key in _NAMED:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def _check_overrides(where: str, overrides: dict[str, Any]) -> None:
    bad = sorted(set(overrides) - set(PROTOCOL_KEYS))
    if bad:
        raise NLBenchError(f"{where}: unknown or per-run config keys {bad}; valid: {', '.join(sorted(PROTOCOL_KEYS))}")
    for key in OPTION_DICTS:
        if key in overrides and not isinstance(overrides[key], dict):
            raise NLBenchError(f"{where}: {key} must be a table of options, got {overrides[key]!r}")


def check_sweep(where: str, sweep: dict[str, Any]) -> dict[str, tuple]:
    """``sweep`` checked: every key a protocol key (``meta_size``) or an option of an option dict
    (``method_options.alpha``), every value a non-empty list; returns the values as tuples."""
    valid = [k for k in PROTOCOL_KEYS if k not in OPTION_DICTS] + [f"{k}.NAME" for k in OPTION_DICTS]
    out: dict[str, tuple] = {}
    for key, values in sweep.items():
        head, dot, inner = key.partition(".")
        if not (head in OPTION_DICTS and dot and inner and "." not in inner) and \
                not (head in PROTOCOL_KEYS and head not in OPTION_DICTS and not dot):
            hint = did_you_mean(key, valid, cutoff=0.6)
            raise NLBenchError(f"{where}: cannot sweep {key!r}.{hint} A sweep varies one of: {', '.join(valid)}")
        if not isinstance(values, list | tuple) or not values:
            raise NLBenchError(f"{where}: the sweep of {key} must be a non-empty list of values, got {values!r}")
        out[key] = tuple(values)
    return out


def _flatten_sweep(where: str, table: Any) -> dict[str, Any]:
    """A grid file's ``sweep`` table as dotted keys: ``{method_options = {alpha = [..]}}`` ->
    ``{"method_options.alpha": [..]}``."""
    if not isinstance(table, dict):
        raise NLBenchError(f"{where}: sweep must be a table of config keys and value lists, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in OPTION_DICTS and isinstance(value, dict):
            out.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            out[key] = value
    return out


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


def method_option_names(method: str) -> frozenset[str] | None:
    """The options ``method`` takes (keyword parameters of its ``__init__``); ``None`` if it takes any."""
    from nlbench.methods import get_method

    sig = inspect.signature(get_method(method).__init__)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return frozenset(n for n, p in sig.parameters.items()
                     if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def _takes(names: frozenset[str] | None, option: str) -> bool:
    return names is None or option in names


def _check_method_options(where: str, methods: list[str], options: Iterable[str]) -> None:
    """Options that apply to every listed method taking them: refuse a method that takes none of them, and an
    option that no listed method takes (a typo would otherwise apply to nothing)."""
    options = sorted(set(options))
    if not options or not methods:
        return
    names = {m: method_option_names(m) for m in methods}
    known = sorted(set().union(*(n for n in names.values() if n is not None)))
    for option in options:
        if not any(_takes(n, option) for n in names.values()):
            hint = did_you_mean(option, known)
            raise NLBenchError(f"{where}: no listed method takes the method option {option!r}.{hint}")
    lacking = [m for m in methods if not any(_takes(names[m], o) for o in options)]
    if lacking:
        who = f"methods {', '.join(lacking)} take" if len(lacking) > 1 else f"method {lacking[0]} takes"
        raise NLBenchError(
            f"{where}: {who} none of the method options {', '.join(options)} (they apply to every listed method "
            "that takes them: list only such methods, or give per-method options under method_defaults in a grid "
            "file)")


def _pick(options: dict[str, Any], names: frozenset[str] | None) -> dict[str, Any]:
    return {k: v for k, v in options.items() if _takes(names, k)}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; option dicts merge key by key."""
    out = dict(base)
    for key, value in over.items():
        if key in OPTION_DICTS and isinstance(value, dict) and isinstance(out.get(key), dict):
            value = {**out[key], **value}
        out[key] = value
    return out


@dataclass
class _Block:
    settings: dict[str, Any]  # RunConfig keys but method_options
    methods: list[str]
    noises: tuple[str, ...]
    seeds: tuple[int, ...]
    options: dict[str, Any]  # the grid's method options (each method gets those it takes)
    row_options: dict[str, Any]  # the row's own method options (ditto), over the sweep's


def _configs(spec: GridSpec, block: _Block, sweep: dict[str, tuple]) -> Iterator[RunConfig]:
    from nlbench.benchmark.harness import canonical_config

    names = {m: method_option_names(m) for m in block.methods}
    keys = list(sweep)
    # Seed-major order: an interrupted grid leaves complete seeds behind, so a leaderboard built from a
    # partial grid already compares every method on the same seeds.
    for seed in block.seeds:
        for noise in block.noises:
            for combo in itertools.product(*sweep.values()):
                settings = dict(spec.base())
                swept_options: dict[str, Any] = {}
                for key, value in zip(keys, combo, strict=True):
                    head, _, inner = key.partition(".")
                    if head == METHOD_OPTIONS:
                        swept_options[inner] = value
                    elif inner:
                        settings[head] = {**settings.get(head, {}), inner: value}
                    else:
                        settings[head] = value
                settings = _merge(settings, block.settings)
                settings.pop(METHOD_OPTIONS, None)
                for method in block.methods:
                    options = {**spec.method_defaults.get(method, {}), **_pick(block.options, names[method]),
                               **_pick(swept_options, names[method]), **_pick(block.row_options, names[method])}
                    yield canonical_config(RunConfig.from_preset(
                        spec.preset, **settings, method=method, noise=noise, seed=int(seed),
                        method_options=options))


def expand(spec: GridSpec) -> list[RunConfig]:
    """The grid's configs in a deterministic order: the main block seed-major (seed, then noise, then the sweep's
    values, then method in the order given), then each extra row in the same way. Names are canonical (aliases
    resolved, noise specs normalised, every name checked, so typos fail before anything runs); a config that
    appears twice (e.g. ``erm`` on ``clean`` in both the main block and an extra row, or a method at every value
    of an option it does not take) is kept once, at its first place."""
    where = f"grid {spec.name!r}"
    _check_overrides(where, spec.overrides)
    sweep = check_sweep(where, spec.sweep)
    for key in ("methods", "noises"):
        if not getattr(spec, key):
            raise NLBenchError(f"{where} lacks the key {key!r} (give --{key} or {key} = [...])")
    if not spec.seeds:
        raise NLBenchError(f"{where} has no seeds")
    options = dict(spec.overrides.get(METHOD_OPTIONS, {}))
    swept = [k.partition(".")[2] for k in sweep if k.startswith(METHOD_OPTIONS + ".")]
    main = canonical_methods(spec.methods, spec.exclude)
    _check_method_options(where, main, [*options, *swept])
    blocks = [_Block({}, main, spec.noises, spec.seeds, options, {})]
    for row in spec.extra:
        rw = f"{where} row {row.name!r}"
        _check_overrides(rw, row.overrides)
        settings = dict(row.overrides)
        row_options = settings.pop(METHOD_OPTIONS, {})
        methods = canonical_methods(row.methods)
        _check_method_options(rw, methods, row_options)
        blocks.append(_Block(settings, methods, row.noises, spec.seeds if row.seeds is None else row.seeds,
                             options, row_options))
    out: list[RunConfig] = []
    seen: set[str] = set()
    for block in blocks:
        for cfg in _configs(spec, block, sweep):
            if cfg.hash() not in seen:
                seen.add(cfg.hash())
                out.append(cfg)
    return out


def override(spec: GridSpec, *, methods: Iterable[str] | None = None, noises: Iterable[str] | None = None,
             seeds: Iterable[int] | None = None, preset: str | None = None, settings: dict[str, Any] | None = None,
             sweep: dict[str, Any] | None = None) -> GridSpec:
    """A copy of ``spec`` with values from the command line on top: ``methods`` and ``noises`` replace the main
    block's, ``seeds`` the grid's (rows that name their own keep them), ``preset`` the grid's preset;
    ``settings`` are RunConfig keys over the base protocol (option dicts merge key by key), ``sweep`` adds or
    replaces swept keys. A value set here replaces a sweep of the same key in ``spec``, and a sweep set here
    replaces a fixed value."""
    out = dataclasses.replace(spec, overrides={k: dict(v) if isinstance(v, dict) else v
                                               for k, v in spec.overrides.items()},
                              sweep=dict(spec.sweep))
    where = f"grid {spec.name!r}"
    if methods is not None:
        out.methods = tuple(methods)
    if noises is not None:
        out.noises = tuple(noises)
    if seeds is not None:
        out.seeds = tuple(seeds)
    if preset is not None:
        PRESETS.get(preset)
        out.preset = preset
    settings = dict(settings or {})
    check_keys(where, settings, PROTOCOL_KEYS)
    for key, value in settings.items():
        if key in OPTION_DICTS:
            out.overrides[key] = {**out.overrides.get(key, {}), **value}
            for inner in value:
                out.sweep.pop(f"{key}.{inner}", None)
            continue
        out.sweep.pop(key, None)
        if key == "dataset":
            out.dataset = value
        elif key in _NAMED:
            setattr(out, key, value)
        else:
            out.overrides[key] = value
    for key, values in check_sweep(where, sweep or {}).items():
        out.sweep[key] = values
        head, _, inner = key.partition(".")
        if inner:
            out.overrides.get(head, {}).pop(inner, None)
    return out


def _tuple(value: Any, key: str, where: str, kind: type) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise NLBenchError(f"{where}: {key} must be a list of {kind.__name__}, got {value!r}")
    return tuple(value)


def parse_grid(name: str, table: dict[str, Any]) -> GridSpec:
    """A :class:`GridSpec` from one TOML table (see ``nlbench/grids.toml`` for the format). Unknown keys are
    refused with a close match; ``methods`` and ``noises`` may be left to the command line (``expand`` asks for
    them), ``seeds`` default to ``[0]``."""
    from nlbench.methods import get_method

    where = f"grid {name!r}"
    if not isinstance(table, dict):
        raise NLBenchError(f"{where} must be a table, got {table!r}")
    table = dict(table)
    check_keys(where, table, (*GRID_KEYS, *PROTOCOL_KEYS))
    dataset = table.pop("dataset", None)
    if dataset is not None and not isinstance(dataset, str):
        raise NLBenchError(f"{where}: dataset must be a name, got {dataset!r}")
    methods = _tuple(table.pop("methods", []), "methods", where, str)
    noises = _tuple(table.pop("noises", []), "noises", where, str)
    seeds = _tuple(table.pop("seeds", [0]), "seeds", where, int)
    extra_rows = table.pop("extra", [])
    if not isinstance(extra_rows, list):
        raise NLBenchError(f"{where}: extra must be a list of tables ([[{name}.extra]])")
    extra = []
    for i, row in enumerate(extra_rows):
        rw = f"{where} extra row {i}"
        if not isinstance(row, dict):
            raise NLBenchError(f"{rw} must be a table")
        row = dict(row)
        check_keys(rw, row, (*ROW_KEYS, *PROTOCOL_KEYS))
        try:
            extra.append(GridRow(name=str(row.pop("name", f"row{i}")),
                                 methods=_tuple(row.pop("methods"), "methods", rw, str),
                                 noises=_tuple(row.pop("noises"), "noises", rw, str),
                                 seeds=_tuple(row.pop("seeds"), "seeds", rw, int) if "seeds" in row else None,
                                 overrides=row))
        except KeyError as e:
            raise NLBenchError(f"{rw} lacks the key {e.args[0]!r}") from None
        _check_overrides(rw, row)
    protocol = {k: table.pop(k) for k in _NAMED if k in table}
    exclude = _tuple(table.pop("exclude", []), "exclude", where, str)
    table.pop("description", None)
    preset = table.pop("preset", None)
    method_defaults = table.pop(METHOD_DEFAULTS, {})
    if not isinstance(method_defaults, dict) or not all(isinstance(v, dict) for v in method_defaults.values()):
        raise NLBenchError(f"{where}: {METHOD_DEFAULTS} must map method names to option tables")
    method_defaults = {get_method(m).name: dict(v) for m, v in method_defaults.items()}
    sweep = check_sweep(where, _flatten_sweep(where, table.pop("sweep", {})))
    if preset is not None:  # a named protocol: its values under the grid's own
        if not isinstance(preset, str):
            raise NLBenchError(f"{where}: preset must be a name, got {preset!r}")
        values = PRESETS.get(preset)
        if dataset is not None and values.get("dataset", dataset) != dataset:
            raise NLBenchError(f"{where}: preset {preset!r} is for another dataset")
    _check_overrides(where, table)
    return GridSpec(name=name, dataset=dataset, methods=methods, noises=noises, seeds=seeds, overrides=table,
                    extra=tuple(extra), exclude=exclude, method_defaults=method_defaults, preset=preset,
                    sweep=sweep, **protocol)


def _is_flat(data: dict[str, Any]) -> bool:
    """A file with one grid may leave out its ``[name]`` header: its top level then holds grid keys."""
    return any(k in GRID_KEYS or k in PROTOCOL_KEYS or not isinstance(v, dict) for k, v in data.items())


def grids_in(data: dict[str, Any], default_name: str) -> dict[str, GridSpec]:
    """The grids of a parsed grid file: one per top-level table (the format of ``nlbench/grids.toml``), or, in a
    file without headers, one named ``default_name``."""
    if _is_flat(data):
        return {default_name: parse_grid(default_name, data)}
    return {name: parse_grid(name, table) for name, table in data.items()}


def named_grids(path: str | os.PathLike | None = None) -> dict[str, GridSpec]:
    """Every grid defined in ``path`` (default: the ``grids.toml`` shipped with nlbench), by name."""
    if path is None:
        try:
            data = tomllib.loads(resources.files("nlbench").joinpath(GRIDS_FILE).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise NLBenchError(f"cannot read grid file {GRIDS_FILE}: {e}") from None
        return grids_in(data, "grid")
    data = read_toml(path, "grid file")
    try:
        grids = grids_in(data, Path(path).stem)
    except NLBenchError as e:  # say which file
        raise NLBenchError(f"{path}: {e}") from None
    if not grids:
        raise NLBenchError(f"grid file {path} defines no grid")
    return grids


def load_grid(name: str | None, path: str | os.PathLike | None = None) -> GridSpec:
    """The named grid of ``path`` (default: nlbench's ``grids.toml``); unknown names raise with the valid list.
    ``name`` may be ``None`` for a file that defines one grid."""
    grids = named_grids(path)
    where = f" in {path}" if path is not None else ""
    if name is None:
        if len(grids) == 1:
            return next(iter(grids.values()))
        raise NLBenchError(f"grid file {path or GRIDS_FILE} defines {len(grids)} grids ({', '.join(sorted(grids))}); "
                           "pick one with --grid NAME")
    if name not in grids:
        hint = did_you_mean(name, grids)
        raise NLBenchError(f"unknown grid {name!r}{where}; valid: {', '.join(sorted(grids))}.{hint}")
    return grids[name]
