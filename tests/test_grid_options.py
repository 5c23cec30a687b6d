"""`nlbench grid` takes every option of `nlbench run` (one definition, derived from RunConfig), method options
that apply to the methods that take them, option sweeps, and grid files of the user's own (`--config`); the same
run reached through `run`, grid flags or a grid file has one config hash and one record (issue 27)."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import fields

import pytest
import typer
from typer.testing import CliRunner

from nlbench.benchmark import grid as G
from nlbench.benchmark import harness
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import canonical_config
from nlbench.benchmark.records import scan_records
from nlbench.cli import app
from nlbench.cli.options import FIELD_HELP, OPTION_DICT_PARAMS, PER_RUN, parse_sweep_options
from nlbench.errors import NLBenchError

runner = CliRunner()
SYN = ["--dataset", "synthetic", "--data-opt", "n_train=300", "--data-opt", "n_test=100", "--meta-size", "40",
       "--epochs", "1", "--batch-size", "64"]
#: `run` options that `grid` names in the plural (a list of runs)
PLURAL = {"method": "methods", "noise": "noises", "seed": "seeds"}
#: `run` options that `grid` has with its own meaning: a grid file, and the summary (not a record) as JSON
OWN_MEANING = {"config", "as_json"}

GRID_FILE = """\
# my-grid.toml
[mine]
description = "constant learning rate, no weight decay, a noisy validation split"
dataset = "synthetic"
dataset_options = { n_train = 300, n_test = 100 }
methods = ["erm", "surrogate"]
noises = ["sym40"]
seeds = [0]
epochs = 1
batch_size = 64
meta_size = 40
val_size = 20
schedule = "constant"
weight_decay = 0.0

[mine.method_defaults]
surrogate = { alpha = 1.0 }
"""
#: the same protocol as grid flags (and, with --method/--noise/--seed, as run flags)
MINE_FLAGS = [*SYN, "--val-size", "20", "--schedule", "constant", "--weight-decay", "0"]


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)


def invoke(*args) -> typer.testing.Result:
    return runner.invoke(app, [str(a) for a in args])


def user_error(res, *fragments: str) -> str:
    """Exit code 2 and one `error:` line, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def dry(*args) -> dict[str, dict]:
    """`grid --dry-run --json`: the runs by run name."""
    res = invoke("grid", *args, "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    return {r["run_name"]: r for r in json.loads(res.stdout)["runs"]}


def run_config(monkeypatch, *args) -> RunConfig:
    """The config `nlbench run ARGS` trains, canonical as its record hashes it (train is not called)."""
    seen = []

    def fake_train(cfg, **_):
        seen.append(canonical_config(cfg))
        raise NLBenchError("stop")

    monkeypatch.setattr(harness, "train", fake_train)
    user_error(invoke("run", *args), "stop")
    return seen[0]


def commands():
    group = typer.main.get_command(app)
    return group.commands["run"], group.commands["grid"]


def signature_types(name: str) -> dict[str, typing.Any]:
    cmd = next(c for c in app.registered_commands if (c.name or c.callback.__name__) == name)
    return {n: typing.get_args(p.annotation)[0] for n, p in inspect.signature(cmd.callback).parameters.items()}


def option_facts(p) -> tuple:
    return (tuple(p.opts), tuple(p.secondary_opts), p.help, p.default, p.min, p.max, p.is_flag, p.multiple,
            p.envvar, p.required, p.hidden)


# ------------------------------------------------------------------------------------- one definition


def test_grid_has_every_run_option_with_the_same_name_help_default_and_type():
    run, grid = commands()
    grid_params = {p.name: p for p in grid.params}
    run_types, grid_types = signature_types("run"), signature_types("grid")
    assert len(run.params) >= 30
    for p in run.params:
        if p.name in PLURAL:
            assert PLURAL[p.name] in grid_params, p.name
        elif p.name in OWN_MEANING:
            assert grid_params[p.name].opts == p.opts
        else:
            assert p.name in grid_params, f"`nlbench grid` lacks run's {p.opts[0]}"
            assert option_facts(grid_params[p.name]) == option_facts(p), p.name
            assert grid_types[p.name] == run_types[p.name], p.name


def test_every_runconfig_field_is_an_option_of_both_commands():
    run, grid = commands()
    for cmd in (run, grid):
        names = {p.name for p in cmd.params}
        for f in fields(RunConfig):
            if f.name in PER_RUN:
                assert (f.name if cmd is run else PLURAL[f.name]) in names
            else:
                assert OPTION_DICT_PARAMS.get(f.name, f.name) in names, (cmd.name, f.name)
            assert f.name in FIELD_HELP, f"RunConfig.{f.name} has no help text in nlbench/cli/options.py"
    helps = {p.name: p.help for p in run.params}
    assert "[default: 0.1]" in helps["gamma"] and "[default: 0]" in helps["val_size"]  # RunConfig's defaults


# One case per protocol option: the grid's config has the value, and `run` with the same flags trains the
# config of the same hash.
PROTOCOL_CASES = [
    (["--noise-seed", "5"], "noise_seed", 5),
    (["--epochs", "2"], "epochs", 2),
    (["--batch-size", "32"], "batch_size", 32),
    (["--lr", "0.01"], "lr", 0.01),
    (["--momentum", "0.5"], "momentum", 0.5),
    (["--weight-decay", "0"], "weight_decay", 0.0),
    (["--schedule", "step", "--epochs", "3", "--milestones", "1,2"], "milestones", [1, 2]),
    (["--gamma", "0.5"], "gamma", 0.5),
    (["--meta-size", "20"], "meta_size", 20),
    (["--val-size", "30"], "val_size", 30),
    (["--augment"], "augment", True),
    (["--model", "mlp512"], "model", "mlp512"),
    (["--opt", "alpha=0.5"], "method_options", {"alpha": 0.5}),
    (["--data-opt", "dim=8"], "dataset_options", {"n_train": 300, "n_test": 100, "dim": 8}),
    (["--feature-epochs", "1,0"], "record_options", {"feature_epochs": [0, 1]}),
]


@pytest.mark.parametrize(("args", "key", "value"), PROTOCOL_CASES, ids=[c[1] for c in PROTOCOL_CASES])
def test_every_protocol_option_works_in_grid_as_in_run(monkeypatch, args, key, value):
    runs = dry("--methods", "surrogate", "--noises", "sym40", "--seeds", "1", *SYN, *args)
    (got,) = runs.values()
    assert got["config"][key] == value
    cfg = run_config(monkeypatch, "--method", "surrogate", "--noise", "sym40", "--seed", "1", *SYN, *args)
    assert got["config_hash"] == cfg.hash()


def test_preset_in_grid_as_in_run(monkeypatch):
    runs = dry("--preset", "fmnist-memorize", "--methods", "surrogate,erm", "--noises", "sym50")
    by = {r["config"]["method"]: r for r in runs.values()}
    assert by["surrogate"]["config"]["method_options"] == {"alpha": 3.0}  # the preset's method_defaults
    assert by["erm"]["config"]["dataset_options"] == {"train_size": 5100}
    for method, rec in by.items():
        cfg = run_config(monkeypatch, "--preset", "fmnist-memorize", "--method", method, "--noise", "sym50")
        assert rec["config_hash"] == cfg.hash()


def test_execution_options_reach_the_driver(monkeypatch, tmp_path):
    seen = {}

    def fake_run_grid(configs, results_dir, executor, **kw):
        seen.update(kw, results_dir=results_dir, n=len(configs))
        raise NLBenchError("stop")

    monkeypatch.setattr(G, "run_grid", fake_run_grid)
    args = ["grid", "--methods", "erm", "--noises", "sym40", *SYN, "--results-dir", tmp_path]
    user_error(invoke(*args, "--force", "--compile", "--checkpoint-every", "5", "--device", "cpu",
                      "--no-progress", "--data-root", tmp_path), "stop")
    assert (seen["force"], seen["compile_model"], seen["checkpoint_every"], seen["device"], seen["progress"]) == (
        True, True, 5.0, "cpu", False)
    assert seen["data_root"] == tmp_path and seen["results_dir"] == tmp_path and seen["n"] == 1
    user_error(invoke(*args, "--no-checkpoint"), "stop")
    assert seen["checkpoint_every"] is None and seen["force"] is False
    user_error(invoke(*args, "--checkpoint-every", "inf"), "--checkpoint-every must be a finite number")
    user_error(invoke(*args, "--download"), "--download needs --data-root")


def test_download_fetches_each_dataset_once_before_the_grid(monkeypatch, tmp_path):
    import nlbench.datasets

    calls = []

    def fake_load(name, root=None, *, download=False, **options):
        calls.append((name, root, download, options))
        raise NLBenchError("no internet here")

    monkeypatch.setattr(nlbench.datasets, "load_dataset", fake_load)
    res = invoke("grid", "--methods", "erm,surrogate", "--noises", "sym40,sym20", *SYN, "--download",
                 "--data-root", tmp_path, "--results-dir", tmp_path)
    user_error(res, "no internet here")
    assert calls == [("synthetic", tmp_path, True, {"n_train": 300, "n_test": 100})]
    assert not (tmp_path / "runs").exists()


def test_payload_carries_force_compile_and_checkpoints(tmp_path):
    cfg = G.expand(G.GridSpec(name="t", dataset="synthetic", methods=("erm",), noises=("sym40",), epochs=1,
                              meta_size=40, overrides={"dataset_options": {"n_train": 300}}))[0]
    payloads = []

    class Spy:
        def run(self, ps):
            payloads.extend(ps)
            return iter(())

        def close(self):
            pass

    G.run_grid([cfg], tmp_path, Spy(), progress=False, force=True, compile_model=True, checkpoint_every=None)
    assert (payloads[0]["resume"], payloads[0]["compile_model"], payloads[0]["checkpoint_dir"]) == (False, True, None)
    G.run_grid([cfg], tmp_path, Spy(), progress=False, checkpoint_every=0.0)
    assert payloads[1]["resume"] and payloads[1]["checkpoint_every"] == 0.0 and payloads[1]["checkpoint_dir"]


def test_force_reruns_a_finished_grid_and_json_prints_the_summary(tmp_path):
    args = ["grid", "--methods", "erm", "--noises", "sym40", *SYN, "--device", "cpu", "--no-progress",
            "--results-dir", tmp_path, "--json"]
    first = json.loads(invoke(*args).stdout)
    assert (first["done"], first["skipped"], first["total"], first["complete"]) == (1, 0, 1, True)
    assert json.loads(invoke(*args).stdout)["skipped"] == 1
    forced = invoke(*args, "--force")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["done"] == 1
    assert len(scan_records(tmp_path)[0]) == 1


# ------------------------------------------------------------------------------------ method options


def test_method_options_apply_to_the_methods_that_take_them():
    runs = dry("--methods", "surrogate,gce", "--noises", "sym40", *SYN, "--opt", "alpha=2", "--opt", "q=0.5")
    by = {r["config"]["method"]: r["config"]["method_options"] for r in runs.values()}
    assert by["surrogate"]["alpha"] == 2 and "q" not in by["surrogate"]
    assert by["gce"]["q"] == 0.5 and "alpha" not in by["gce"]


@pytest.mark.parametrize(("args", "fragments"), [
    (["--methods", "erm,surrogate", "--opt", "alpha=2"], ["method erm takes none of the method options alpha",
                                                          "method_defaults"]),
    (["--methods", "erm,oracle,surrogate", "--opt", "alpha=0.3,3"], ["methods erm, oracle take none of"]),
    (["--methods", "surrogate", "--opt", "alhpa=2"], ["no listed method takes the method option 'alhpa'",
                                                      "Did you mean 'alpha'?"]),
    (["--methods", "surrogate", "--opt", "alpha=2", "--opt", "wo=1"], ["option 'wo'. Did you mean 'w0'?"]),
    (["--methods", "surrogate", "--opt", "alpha=abc"], ["option alpha must be a number, got 'abc'"]),
    (["--methods", "surrogate", "--opt", "alpha"], ["--opt 'alpha' must look like key=value"]),
    (["--methods", "surrogate", "--sweep", "metasize=1,2"], ["cannot sweep 'metasize'. Did you mean 'meta_size'?"]),
    (["--methods", "surrogate", "--sweep", "seed=1,2"], ["cannot sweep 'seed'"]),
    (["--methods", "surrogate", "--epochs", "0"], ["--epochs must be at least 1, got 0"]),
    (["--methods", "surrogate", "--val-size", "-1"], ["--val-size must be non-negative"]),
    (["--methods", "surrogate", "--schedule", "linear"], ["--schedule must be cosine, step or constant"]),
    (["--methods", "surrogate", "--preset", "fmnistt"], ["unknown preset 'fmnistt'"]),
])
def test_grid_option_errors_are_one_line(tmp_path, args, fragments):
    user_error(invoke("grid", "--noises", "sym40", *SYN, *args, "--results-dir", tmp_path), *fragments)
    assert not (tmp_path / "runs").exists()


def test_row_methods_take_the_options_they_have():
    """`--grid smoke --methods surrogate --opt alpha=2`: the smoke grid's `erm on clean` row runs without alpha
    (a row is the grid's own reference), the main block's surrogate with it."""
    runs = dry("--grid", "smoke", "--methods", "surrogate", "--opt", "alpha=2", "--seeds", "0")
    got = sorted((r["config"]["method"], r["config"]["noise"], r["config"]["seed"],
                  r["config"]["method_options"].get("alpha")) for r in runs.values())
    # --seeds replaces the grid's seeds; the row names its own seeds (0, 1) and keeps them
    assert got == [("erm", "clean", 0, None), ("erm", "clean", 1, None), ("surrogate", "pairflip30", 0, 2),
                   ("surrogate", "sym40", 0, 2)]


# ------------------------------------------------------------------------------------------ sweeps


def test_option_sweep_runs_and_renders_with_table(tmp_path):
    res = invoke("grid", "--methods", "surrogate", "--noises", "sym40", *SYN, "--opt", "alpha=0.3,3",
                 "--device", "cpu", "--no-progress", "--results-dir", tmp_path)
    assert res.exit_code == 0, res.output
    assert "2 done, 0 skipped" in res.stdout
    alphas = sorted(r["config"]["method_options"]["alpha"] for r in scan_records(tmp_path)[0])
    assert alphas == [0.3, 3.0]
    table = invoke("table", "--by", "method_options.alpha", "--results-dir", tmp_path)
    assert table.exit_code == 0, table.output
    rows = [line for line in table.stdout.splitlines() if line.startswith("| 0.3 ") or line.startswith("| 3.0 ")]
    assert len(rows) == 2 and all("| surrogate |" in r for r in rows), table.stdout


def test_sweep_forms_agree():
    """--opt alpha=a,b, --sweep method_options.alpha=a,b and a grid file's sweep table give the same runs; a
    protocol key sweeps too; the dry run shows each run's swept value."""
    base = ["--methods", "surrogate", "--noises", "sym40", *SYN]
    by_opt = dry(*base, "--opt", "alpha=0.3,3")
    assert len(by_opt) == 2
    assert dry(*base, "--sweep", "method_options.alpha=0.3,3") == by_opt
    spec = G.parse_grid("g", {"dataset": "synthetic", "methods": ["surrogate"], "noises": ["sym40"], "epochs": 1,
                              "meta_size": 40, "batch_size": 64, "dataset_options": {"n_train": 300, "n_test": 100},
                              "sweep": {"method_options": {"alpha": [0.3, 3]}}})
    assert {c.run_name() for c in G.expand(spec)} == set(by_opt)
    two_keys = dry(*base, "--opt", "alpha=0.3,3", "--sweep", "meta_size=20,40")
    assert sorted((r["config"]["meta_size"], r["config"]["method_options"]["alpha"]) for r in two_keys.values()) == [
        (20, 0.3), (20, 3.0), (40, 0.3), (40, 3.0)]
    text = invoke("grid", *base, "--opt", "alpha=0.3,3", "--dry-run").stdout
    assert "method_options.alpha=0.3" in text and "method_options.alpha=3.0" in text
    assert text.strip().splitlines()[-1].endswith(": 2 runs, 0 done, 2 to run")
    # a fixed value replaces a file's sweep of the same key, and a sweep a fixed value
    assert G.override(spec, settings={"method_options": {"alpha": 1}}).sweep == {}
    fixed = G.override(G.GridSpec(name="f", overrides={"method_options": {"alpha": 1, "w0": 0.5}}),
                       sweep={"method_options.alpha": [2, 3]})
    assert fixed.overrides["method_options"] == {"w0": 0.5} and fixed.sweep == {"method_options.alpha": (2, 3)}


def test_sweep_values_parse():
    """Only a value that is not JSON sweeps: a JSON list or a quoted string with commas is one value."""
    fixed, swept = parse_sweep_options(["a=0.3,1,3", "b=[1,2]", 'c="x,y"', "d=soft,hard", "e=3", "f=x"], "--opt")
    assert fixed == {"b": [1, 2], "c": "x,y", "e": 3, "f": "x"}
    assert swept == {"a": (0.3, 1, 3), "d": ("soft", "hard")}
    assert parse_sweep_options(["a=1,2", "a=3"], "--opt") == ({"a": 3}, {})  # the last one given wins
    with pytest.raises(NLBenchError, match="sweeps no value"):
        parse_sweep_options(["a=,"], "--opt")


def test_method_without_the_swept_option_runs_once():
    runs = dry("--methods", "surrogate,gce", "--noises", "sym40", *SYN, "--opt", "alpha=0.3,3", "--opt", "q=0.5")
    assert sorted(r["config"]["method"] for r in runs.values()) == ["gce", "surrogate", "surrogate"]


# -------------------------------------------------------------------------------------- grid files


def test_grid_file_flags_and_run_reach_one_hash_and_one_record(tmp_path, monkeypatch):
    path = tmp_path / "my-grid.toml"
    path.write_text(GRID_FILE)
    results = tmp_path / "res"
    from_file = dry("--config", path, "--results-dir", results)
    # as flags, per method (an --opt applies to every listed method, and erm takes no alpha)
    from_flags = {**dry("--methods", "erm", "--noises", "sym40", *MINE_FLAGS, "--results-dir", results),
                  **dry("--methods", "surrogate", "--noises", "sym40", "--opt", "alpha=1", *MINE_FLAGS,
                        "--results-dir", results)}
    assert set(from_file) == set(from_flags) and len(from_file) == 2
    for rec in from_file.values():
        cfg = rec["config"]
        assert (cfg["val_size"], cfg["schedule"], cfg["weight_decay"]) == (20, "constant", 0.0)
        flags = ["--opt", "alpha=1"] if cfg["method"] == "surrogate" else []
        ran = run_config(monkeypatch, "--method", cfg["method"], "--noise", "sym40", *MINE_FLAGS, *flags)
        assert ran.hash() == rec["config_hash"]
    monkeypatch.undo()
    res = invoke("grid", "--config", path, "--results-dir", results, "--device", "cpu", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "grid mine: 2 done, 0 skipped" in res.stdout  # the file's grid name names the log
    assert (results / "grids" / "mine.json").is_file()
    again = invoke("grid", "--methods", "surrogate", "--noises", "sym40", "--opt", "alpha=1", *MINE_FLAGS,
                   "--results-dir", results, "--device", "cpu", "--no-progress")
    assert "0 done, 1 skipped" in again.stdout, again.output
    reused = invoke("run", "--method", "surrogate", "--noise", "sym40", "--opt", "alpha=1", *MINE_FLAGS,
                    "--results-dir", results, "--device", "cpu", "--no-progress")
    assert reused.exit_code == 0 and "finished record reused" in reused.stdout, reused.output
    assert [line.split()[0] for line in invoke("grid", "--config", path, "--results-dir", results,
                                               "--dry-run").stdout.splitlines()[:2]] == ["done", "done"]


def test_command_line_overrides_a_grid_file(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID_FILE)
    runs = dry("--config", path, "--methods", "surrogate", "--seeds", "0,1", "--val-size", "0", "--opt", "w0=0.5",
               "--data-opt", "dim=8")
    assert len(runs) == 2
    for r in runs.values():
        cfg = r["config"]
        assert cfg["val_size"] == 0 and cfg["schedule"] == "constant"  # the flag over the file, the rest kept
        assert cfg["method_options"] == {"alpha": 1.0, "w0": 0.5}  # method_defaults under --opt
        assert cfg["dataset_options"] == {"n_train": 300, "n_test": 100, "dim": 8}  # merged key by key
    # --opt over the file's per-method default
    (r,) = dry("--config", path, "--methods", "surrogate", "--opt", "alpha=3").values()
    assert r["config"]["method_options"] == {"alpha": 3}


def test_grid_file_forms(tmp_path):
    """A file without a [name] header is one grid named after the file (a `run --config` file of protocol keys
    is one), a file of several grids needs --grid, and a grid file may name a preset and sweep."""
    flat = tmp_path / "protocol.toml"
    flat.write_text('dataset = "synthetic"\nepochs = 1\nmeta_size = 40\nval_size = 20\n'
                    'dataset_options = { n_train = 300 }\n')
    runs = dry("--config", flat, "--methods", "erm", "--noises", "sym40,sym20")
    assert {r["config"]["val_size"] for r in runs.values()} == {20} and len(runs) == 2
    res = invoke("grid", "--config", flat, "--methods", "erm", "--noises", "sym40", "--dry-run")
    assert "grid protocol-" in res.stdout  # the name, with a digest: the flags changed the grid
    two = tmp_path / "two.toml"
    two.write_text(GRID_FILE + '\n[other]\nmethods = ["erm"]\nnoises = ["clean"]\npreset = "fmnist"\nepochs = 1\n'
                   '[other.sweep]\nlr = [0.01, 0.1]\n')
    user_error(invoke("grid", "--config", two, "--dry-run"), "defines 2 grids (mine, other); pick one with --grid")
    other = dry("--config", two, "--grid", "other")
    assert sorted(r["config"]["lr"] for r in other.values()) == [0.01, 0.1]
    assert {(r["config"]["dataset"], r["config"]["model"]) for r in other.values()} == {("fashion-mnist", "lenet")}
    # the preset's dataset: a file that names another is refused (the command line may override it, as in run)
    bad = tmp_path / "bad.toml"
    bad.write_text('preset = "fmnist"\ndataset = "synthetic"\nmethods = ["erm"]\nnoises = ["clean"]\n')
    user_error(invoke("grid", "--config", bad, "--dry-run"), "preset 'fmnist' is for another dataset")
    assert {r["config"]["dataset"] for r in dry("--config", two, "--grid", "other", "--dataset", "synthetic",
                                                  "--meta-size", "40").values()} == {"synthetic"}
    user_error(invoke("grid", "--config", two, "--grid", "minee", "--dry-run"),
               f"unknown grid 'minee' in {two}; valid: mine, other. Did you mean 'mine'?")


@pytest.mark.parametrize(("text", "fragment"), [
    ('[g]\nmethods = ["erm"]\nnoises = ["sym40"]\nepoch = 1\n',
     "grid 'g': unknown key 'epoch'. Did you mean 'epochs'?"),
    ('methods = ["erm"]\nnoises = ["sym40"]\nval_sise = 1\n', "unknown key 'val_sise'. Did you mean 'val_size'?"),
    ('methods = ["erm"]\nnoise = ["sym40"]\n', "unknown key 'noise'. Did you mean 'noises'?"),
    ('[g]\nmethods = ["erm"]\nnoises = ["sym40"]\n[[g.extra]]\nmethods = ["erm"]\nnoises = ["clean"]\nlrr = 1\n',
     "grid 'g' extra row 0: unknown key 'lrr'. Did you mean 'lr'?"),
    ('methods = ["erm"]\nnoises = ["sym40"]\n[sweep]\nmethod_options = { alpha = 3 }\n',
     "the sweep of method_options.alpha must be a non-empty list"),
    ('methods = ["erm"]\nnoises = ["sym40"]\nmethod_options = 3\n', "method_options must be a table of options"),
    ('methods = ["erm"]\nnoises = ["sym40"]\n[method_defaults]\nsurrogat = { alpha = 1 }\n',
     "unknown method 'surrogat'"),
    ('methods = ["erm"]\n', "lacks the key 'noises' (give --noises or noises = [...])"),
    ("methods = [\n", "is not valid TOML"),
])
def test_grid_file_errors_are_one_line(tmp_path, text, fragment):
    path = tmp_path / "g.toml"
    path.write_text(text)
    user_error(invoke("grid", "--config", path, "--dry-run"), fragment)


def test_missing_grid_file(tmp_path):
    user_error(invoke("grid", "--config", tmp_path / "absent.toml"), "cannot read grid file")
