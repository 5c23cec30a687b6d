"""The run-record schema: one validator for every reader of a results folder.

A results folder is untrusted input: records are shared and downloaded. :func:`record_problems` checks a
parsed record field by field, and :func:`nlbench.benchmark.records.load_record` (hence ``scan_records``,
``find_record`` and every command built on them) hands on only records without problems:

* types are strict: ``true`` is not a seed, ``"3"`` is not an epoch, a string is not a dict;
* numbers are finite and in range: accuracies and rates in [0, 1], times and sizes non-negative, seeds within
  int64, epochs numbered 1, 2, ... in order;
* names that later become parts of file names and Markdown (method, noise, dataset, model) are plain
  (:data:`NAME`), option names are identifiers (:data:`OPTION_KEY`) and a config hash is hex;
* nothing is nested deeper than :data:`MAX_DEPTH` (every reader may recurse safely).

A number that is missing is ``null`` on disk and NaN in memory (:func:`~nlbench.benchmark.records.write_record`
stores NaN as null), so the two count alike where a value may be missing; infinities never pass, and the JSON
reader refuses the non-JSON tokens ``NaN`` and ``Infinity`` and overflowing numbers such as ``1e999``. Unknown
keys are allowed (a newer writer may add fields), within the depth bound. Ranges are
:class:`nlbench.options.Range`; the types are checked strictly here rather than by
:func:`nlbench.options.check_value`, which converts command-line strings (``"3"`` to 3) as a record must not.
"""

from __future__ import annotations

import math
import re
from typing import Any

from nlbench.options import Range

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")
#: A method, noise, dataset or model name as the registries make them; these become file names and Markdown.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,63}")
NAME_RULE = "a plain name (letters, digits, '_.+=-', at most 64 characters)"
#: A run name (``dataset__method__noise__s<seed>__<hash>``, see ``RunConfig.run_name``).
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,299}")
#: An option name (a keyword parameter of a method or a loader); it becomes part of a method's label.
OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
#: A config hash (``RunConfig.hash``: 12 hex digits).
HASH = re.compile(r"[0-9a-f]{6,64}")
#: Deepest nesting of lists and objects a record may have (real records: 5).
MAX_DEPTH = 32
#: Most problems listed for one record.
MAX_PROBLEMS = 8
#: Largest class count of a feature view.
MAX_CLASSES = 1000

UNIT = Range(0, 1)
NONNEG = Range(0)
POSITIVE = Range(1)
INT64 = Range(0, 2**63 - 1)
VERSIONS = Range(1, SCHEMA_VERSION)
#: Stages a method may train (the harness allows up to ``STAGES.high``): a record of ``S`` stages has up to
#: ``S * config.epochs`` history entries, each with its ``stage``.
STAGES = Range(2, 10)

#: key -> (kind, range, nullable) for the keys every record must have. Kinds: int, num, str, name, bool, dict,
#: list (``int`` and ``num`` never accept a boolean).
REQUIRED: dict[str, tuple[str, Range | None, bool]] = {
    "schema": ("int", VERSIONS, False), "method": ("name", None, False), "noise": ("name", None, False),
    "dataset": ("name", None, False), "model": ("name", None, False), "seed": ("int", INT64, False),
    "status": ("str", None, False), "config": ("dict", None, False), "config_hash": ("str", None, False),
    "env": ("dict", None, False), "noise_report": ("dict", None, False), "history": ("list", None, False),
    "final": ("dict", None, False), "wall_time_s": ("num", NONNEG, False),
}
#: Keys a record may have, checked when present.
OPTIONAL: dict[str, tuple[str, Range | None, bool]] = {
    "run_name": ("str", None, False), "noise_seed": ("int", INT64, True), "oracle": ("bool", None, False),
    "uses_noise_rate": ("bool", None, False), "uses_meta": ("bool", None, False),
    "method_options": ("dict", None, False), "dataset_info": ("dict", None, False),
    "val_noise_report": ("dict", None, True), "sizes": ("dict", None, False), "created": ("str", None, False),
    "error": ("dict", None, False), "features": ("dict", None, False), "path": ("str", None, False),
    "resumed_from_epoch": ("int", Range(2, 10**6), False), "stages": ("int", STAGES, False),
    "method_version": ("int", Range(1, 10**6), False), "family_options": ("dict", None, False),
}
#: The config keys readers use (others may exist); equal to the record's own where both have them.
CONFIG: dict[str, tuple[str, Range | None, bool]] = {
    "method": ("name", None, False), "noise": ("name", None, False), "dataset": ("name", None, False),
    "model": ("name", None, True), "seed": ("int", INT64, False), "noise_seed": ("int", INT64, True),
    "epochs": ("int", Range(1, 10**6), False), "batch_size": ("int", Range(1, 2**31), False),
    "lr": ("num", NONNEG, False), "momentum": ("num", None, False), "weight_decay": ("num", None, False),
    "schedule": ("name", None, False), "milestones": ("list", None, False), "gamma": ("num", None, False),
    "meta_size": ("int", INT64, False), "val_size": ("int", INT64, False), "augment": ("bool", None, False),
    "method_options": ("dict", None, False), "dataset_options": ("dict", None, False),
    "record_options": ("dict", None, False),
}
#: Per-epoch history keys readers use (a method may log others).
HISTORY: dict[str, tuple[str, Range | None, bool]] = {
    "epoch": ("int", POSITIVE, False), "test_acc": ("num", UNIT, False), "epoch_time_s": ("num", NONNEG, False),
    "val_acc": ("num", UNIT, True), "train_loss": ("num", None, True), "lr": ("num", NONNEG, True),
    "w_clean_mean": ("num", None, True), "w_noisy_mean": ("num", None, True), "w_auroc": ("num", UNIT, True),
    "w_noisy_below_0.1": ("num", UNIT, True), "w_seen": ("int", INT64, True), "stage": ("int", POSITIVE, False),
}
HISTORY_NEEDS = ("epoch", "test_acc", "epoch_time_s")
FINAL: dict[str, tuple[str, Range | None, bool]] = {
    "last_acc": ("num", UNIT, True), "best_acc": ("num", UNIT, True), "last5_acc": ("num", UNIT, True),
    "best_epoch": ("int", Range(1, 2**63 - 1), True), "epochs_done": ("int", INT64, True),
}
FINAL_NEEDS = ("last_acc", "best_acc", "last5_acc")


def _show(v: Any, limit: int = 40) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _finite(v: int | float) -> bool:
    """Finite as a float: readers compute with floats, and an integer of 400 digits overflows one."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


class _Checker:
    """Collects problems; each check returns whether the value passed."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, message: str) -> bool:
        self.problems.append(message)
        return False

    def value(self, where: str, v: Any, kind: str, rng: Range | None = None, nullable: bool = False) -> bool:
        if nullable and _is_missing(v):
            return True
        at = _show(where, 80)  # a key from the record may be long
        number = isinstance(v, int | float) and not isinstance(v, bool)
        ok = {"int": isinstance(v, int) and not isinstance(v, bool), "num": number,
              "str": isinstance(v, str), "name": isinstance(v, str), "bool": isinstance(v, bool),
              "dict": isinstance(v, dict), "list": isinstance(v, list)}[kind]
        if not ok:
            return self.add(f"key {at} has type {type(v).__name__}")
        if kind == "num" and not _finite(v):
            return self.add(f"key {at} is {_show(v)}, not a finite number")
        if kind == "name" and not NAME.fullmatch(v):
            return self.add(f"key {at} is {_show(v)}, not {NAME_RULE}")
        if rng is not None and number and not rng.contains(v):
            return self.add(f"key {at} is {_show(v)}, outside {_range_text(rng)}")
        return True

    def fields(self, prefix: str, obj: dict, spec: dict[str, tuple[str, Range | None, bool]]) -> bool:
        ok = True
        for key, (kind, rng, nullable) in spec.items():
            if key in obj:
                ok = self.value(f"{prefix}{key}", obj[key], kind, rng, nullable) and ok
        return ok

    def items(self, where: str, values: Any, kind: str, rng: Range | None = None) -> bool:
        """A list whose every element passes (only the first bad element is reported)."""
        if not self.value(where, values, "list"):
            return False
        return all(self.value(f"{where}[{i}]", v, kind, rng) for i, v in enumerate(values))


def _range_text(rng: Range) -> str:
    if rng.high is not None and rng.high >= 2**31:
        return f"[{rng.low:g}, 2**63)" if rng.high == 2**63 - 1 else f"[{rng.low:g}, {rng.high}]"
    return str(rng)


def depth_exceeds(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists and dicts in ``obj`` nest deeper than ``limit`` levels (iterative: no recursion limit)."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return False


def record_problems(rec: Any) -> list[str]:
    """Every schema problem of a parsed record (empty if it is valid), at most :data:`MAX_PROBLEMS`."""
    if not isinstance(rec, dict):
        return ["record is not a JSON object"]
    if depth_exceeds(rec):
        return [f"nested deeper than {MAX_DEPTH} levels"]
    c = _Checker()
    for key in REQUIRED:
        if key not in rec:
            c.add(f"missing key {key!r}")
    c.fields("", {k: v for k, v in rec.items() if k in REQUIRED}, REQUIRED)
    if c.problems:  # the rest relies on the required keys' types
        return c.problems[:MAX_PROBLEMS]
    if rec["status"] not in STATUSES:
        c.add(f"status {_show(rec['status'])} is not one of {STATUSES}")
    if isinstance(rec.get("run_name"), str) and not RUN_NAME.fullmatch(rec["run_name"]):
        c.add(f"key 'run_name' is {_show(rec['run_name'])}, not a run name")
    if not HASH.fullmatch(rec["config_hash"]):
        c.add(f"key 'config_hash' is {_show(rec['config_hash'])}, not a hex hash")
    c.fields("", rec, OPTIONAL)
    _config(c, rec)
    _history(c, rec["history"], rec["config"].get("epochs"), rec.get("stages"))
    final = rec["final"]
    if c.fields("final.", final, FINAL) and rec["status"] == "ok":
        if not set(FINAL_NEEDS) <= set(final):
            c.add("final lacks last_acc/best_acc/last5_acc")
        else:
            for key in FINAL_NEEDS:
                if _is_missing(final[key]):
                    c.add(f"key 'final.{key}' is missing a value in a finished run")
    c.value("noise_report.realised_rate", rec["noise_report"].get("realised_rate"), "num", UNIT, nullable=True)
    if "per_class_rate" in rec["noise_report"]:
        rates = rec["noise_report"]["per_class_rate"]
        if c.value("noise_report.per_class_rate", rates, "list"):
            for i, r in enumerate(rates):
                if not c.value(f"noise_report.per_class_rate[{i}]", r, "num", UNIT, nullable=True):
                    break
    for key in ("transition_matrix", "nominal_transition_matrix"):
        if key in rec["noise_report"]:
            _matrix(c, f"noise_report.{key}", rec["noise_report"][key])
    if isinstance(rec.get("error"), dict):
        c.fields("error.", rec["error"], {"reason": ("str", None, False), "epoch": ("int", INT64, True)})
    if isinstance(rec.get("sizes"), dict):
        for key, v in rec["sizes"].items():
            c.value(f"sizes.{key}", v, "int", INT64)
    if isinstance(rec.get("features"), dict):
        c.problems += features_problems(rec["features"])
    if len(c.problems) > MAX_PROBLEMS:
        return [*c.problems[:MAX_PROBLEMS - 1], f"and {len(c.problems) - MAX_PROBLEMS + 1} more"]
    return c.problems


def _config(c: _Checker, rec: dict) -> None:
    cfg = rec["config"]
    c.fields("config.", cfg, CONFIG)
    if isinstance(cfg.get("milestones"), list):
        c.items("config.milestones", cfg["milestones"], "int", INT64)
    for key in ("method", "noise", "dataset", "model", "seed"):
        if key in cfg and cfg[key] is not None and cfg[key] != rec[key]:
            c.add(f"config.{key} {_show(cfg[key])} differs from {key} {_show(rec[key])}")
    for where, options in (("config.method_options", cfg.get("method_options")),
                           ("config.dataset_options", cfg.get("dataset_options")),
                           ("config.record_options", cfg.get("record_options")),
                           ("method_options", rec.get("method_options"))):
        bad = next((k for k in options if not OPTION_KEY.fullmatch(k)), None) if isinstance(options, dict) else None
        if bad is not None:
            c.add(f"{where} has the option name {_show(bad)}, not an identifier")


def _matrix(c: _Checker, where: str, m: Any) -> None:
    """A transition matrix: a non-empty square list of rows of numbers in [0, 1] (readers take its diagonal)."""
    if m is None or not c.value(where, m, "list"):
        return
    if not 1 <= len(m) <= MAX_CLASSES or not all(isinstance(row, list) and len(row) == len(m) for row in m):
        c.add(f"{where} is not a square matrix of at most {MAX_CLASSES} classes")
        return
    for i, row in enumerate(m):
        if not c.items(f"{where}[{i}]", row, "num", UNIT):
            return


def _history(c: _Checker, history: list, epochs: Any, stages: Any = None) -> None:
    """Epochs numbered 1, 2, ...; at most ``epochs`` of them, or ``stages * epochs`` for a record of several
    stages, whose entries then carry their stage (entry ``i`` is in stage ``i // epochs + 1``)."""
    staged = isinstance(stages, int) and not isinstance(stages, bool) and STAGES.contains(stages)
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        limit = epochs * stages if staged else epochs
        if len(history) > limit:
            c.add(f"history has {len(history)} epochs, the config only {limit}"
                  + (f" ({stages} stages of {epochs})" if staged else ""))
            return
    else:
        staged = False  # without a valid epoch count the stages cannot be checked (config.epochs is reported)
    for i, h in enumerate(history):
        if not isinstance(h, dict) or not set(HISTORY_NEEDS) <= set(h):
            c.add(f"history[{i}] lacks epoch/test_acc/epoch_time_s")
            return
        if not c.fields(f"history[{i}].", h, HISTORY):
            return
        if h["epoch"] != i + 1:
            c.add(f"key 'history[{i}].epoch' is {h['epoch']}, expected {i + 1} (epochs are numbered 1, 2, ...)")
            return
        if staged and h.get("stage") != i // epochs + 1:
            c.add(f"key 'history[{i}].stage' is {_show(h.get('stage'))}, expected {i // epochs + 1} "
                  f"({stages} stages of {epochs} epochs)")
            return


def features_problems(block: Any, where: str = "features") -> list[str]:
    """Schema problems of a record's feature view (see :mod:`nlbench.benchmark.features`); empty if valid."""
    c = _Checker()
    if not c.value(where, block, "dict"):
        return c.problems
    for key in ("sample_index", "noisy_label", "true_label", "is_noisy", "classes", "epochs"):
        if key not in block:
            c.add(f"{where} lacks {key!r}")
    if c.problems:
        return c.problems
    classes = block["classes"]
    if not c.items(f"{where}.classes", classes, "str"):
        return c.problems
    if not 1 <= len(classes) <= MAX_CLASSES:
        return [f"{where}.classes has {len(classes)} names, expected 1..{MAX_CLASSES}"]
    labels = Range(0, len(classes) - 1)
    ok = c.items(f"{where}.sample_index", block["sample_index"], "int", INT64)
    ok = c.items(f"{where}.noisy_label", block["noisy_label"], "int", labels) and ok
    ok = c.items(f"{where}.true_label", block["true_label"], "int", labels) and ok
    ok = c.items(f"{where}.is_noisy", block["is_noisy"], "bool") and ok
    if not ok:
        return c.problems
    n = len(block["sample_index"])
    if {len(block[k]) for k in ("noisy_label", "true_label", "is_noisy")} != {n}:
        return [f"{where}: sample_index, noisy_label, true_label and is_noisy differ in length"]
    if not c.value(f"{where}.epochs", block["epochs"], "dict"):
        return c.problems
    for epoch, coords in block["epochs"].items():
        at = f"{where}.epochs[{_show(epoch)}]"
        if not (isinstance(epoch, str) and re.fullmatch(r"0|[1-9][0-9]{0,5}", epoch)):  # 0 .. 999999
            return [f"{at}: not an epoch number"]
        if not c.value(at, coords, "list"):
            return c.problems
        if len(coords) != n:
            return [f"{at} holds {len(coords)} points, expected {n}"]
        for i, xy in enumerate(coords):
            if not (isinstance(xy, list) and len(xy) == 2):
                return [f"{at}[{i}] is not an [x, y] pair"]
            if not (c.value(f"{at}[{i}][0]", xy[0], "num") and c.value(f"{at}[{i}][1]", xy[1], "num")):
                return c.problems
    return c.problems
