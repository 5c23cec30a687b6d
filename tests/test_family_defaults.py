"""Per-noise-family method defaults (``Method.family_defaults``): every kind has a family, the defaults land in the
config (and so its hash) below explicit options, and every method's table names real families and options."""

from __future__ import annotations

import pytest

from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import canonical_config
from nlbench.methods import get_method, list_methods
from nlbench.noise import NOISE_FAMILIES, NOISES, noise_family
from nlbench.options import bind_options


@pytest.mark.parametrize(("spec", "family"), [
    ("clean", "clean"), ("sym50", "symmetric"), ("uniform40", "symmetric"), ("pairflip45", "class-dependent"),
    ("flipback40", "class-dependent"), ("asym40", "class-dependent"), ("background30", "class-dependent"),
    ("idn40", "instance"), ("cifar10n-worst", "human"),
])
def test_every_kind_has_its_family(spec, family):
    assert noise_family(spec) == family


def test_every_registered_kind_names_a_known_family():
    assert {NOISES.get(k).family for k in NOISES.list()} <= set(NOISE_FAMILIES)


def options(method, noise, **kw):
    return canonical_config(RunConfig(method=method, noise=noise, dataset="synthetic", **kw)).method_options


def test_elr_takes_the_official_asymmetric_config_on_class_dependent_noise():
    assert options("elr", "pairflip45") == {"beta": 0.9, "lam": 1.0}
    assert options("elr", "asym40") == {"beta": 0.9, "lam": 1.0}
    assert options("elr", "sym50") == {} and options("elr", "idn40") == {}


def test_explicit_options_override_family_defaults_and_the_hash_follows():
    assert options("elr", "pairflip45", method_options={"lam": 2.0}) == {"beta": 0.9, "lam": 2.0}
    explicit = canonical_config(RunConfig(method="elr", noise="pairflip45", dataset="synthetic",
                                          method_options={"beta": 0.9, "lam": 1.0}))
    implied = canonical_config(RunConfig(method="elr", noise="pairflip45", dataset="synthetic"))
    assert explicit.hash() == implied.hash()  # one run, however it was asked for
    sym = canonical_config(RunConfig(method="elr", noise="sym50", dataset="synthetic"))
    assert sym.method_options == {}


@pytest.mark.parametrize("name", list_methods())
def test_family_tables_name_families_and_options_that_exist(name):
    cls = get_method(name)
    for family, values in cls.family_defaults.items():
        assert family in NOISE_FAMILIES, (name, family)
        bind_options(cls.__init__, values, f"method {name!r}")  # raises on an unknown option or a bad value


def test_family_defaults_are_recorded_and_not_a_separate_leaderboard_entry(tmp_path):
    from nlbench.benchmark.harness import train
    from nlbench.benchmark.leaderboard import method_label

    cfg = RunConfig(method="elr", noise="pairflip30", dataset="synthetic", epochs=1, meta_size=0, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    record = train(cfg, device="cpu")
    assert record["family_options"] == {"beta": 0.9, "lam": 1.0}
    assert record["method_options"] == {"beta": 0.9, "lam": 1.0}
    assert method_label(record) == "elr"
    record["config"]["method_options"]["lam"] = 2.0  # an explicit option is still an entry of its own
    assert method_label(record) == "elr[lam=2.0]"


def test_a_record_of_an_older_method_version_is_stale_and_trained_again(tmp_path):
    from nlbench.benchmark.harness import train
    from nlbench.benchmark.records import find_record, record_path, write_record

    cfg = RunConfig(method="sce", noise="sym40", dataset="synthetic", epochs=1, meta_size=0, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    record = train(cfg, device="cpu", results_dir=tmp_path)
    assert record["method_version"] == 2
    name = canonical_config(cfg).run_name()
    assert find_record(tmp_path, name) is not None
    old = {k: v for k, v in record.items() if k not in ("path", "method_version")}  # a version-1 record
    record_path(tmp_path, name).unlink()
    write_record(tmp_path, old)
    assert find_record(tmp_path, name) is None
    again = train(cfg, device="cpu", results_dir=tmp_path)
    assert "resumed" not in again and again["method_version"] == 2
    assert find_record(tmp_path, name)["method_version"] == 2


def test_the_leaderboard_shows_the_current_record_not_the_one_it_supersedes():
    """An ELR record made before the family defaults (no options on pairflip) and the current one are the same
    leaderboard entry: the current one is kept whatever the hashes' order, and the old one is named stale."""
    from nlbench.benchmark.config import config_hash
    from nlbench.benchmark.harness import train
    from nlbench.benchmark.leaderboard import _runs_frame, _superseded_lines
    from nlbench.benchmark.records import is_stale

    cfg = RunConfig(method="elr", noise="pairflip30", dataset="synthetic", epochs=1, meta_size=0, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    new = train(cfg, device="cpu")
    old = {k: v for k, v in new.items() if k not in ("family_options", "method_version")}
    old["config"] = {**new["config"], "method_options": {}}
    old["config_hash"] = config_hash(old["config"])
    old["final"] = {**new["final"], "last_acc": 0.01}
    assert is_stale(old) and not is_stale(new)
    for order in ([old, new], [new, old]):
        runs, _ = _runs_frame(order)
        assert list(runs["config_hash"]) == [new["config_hash"]]
    assert "`elr` (1)" in _superseded_lines([old, new])[0]
    sym = {**old, "noise": "sym30", "config": {**old["config"], "noise": "sym30"}}
    assert not is_stale(sym)  # no family defaults on symmetric noise: nothing superseded it


def test_a_checkpoint_of_another_method_version_is_not_resumed(tmp_path, monkeypatch, capsys):
    from nlbench.benchmark.harness import train
    from nlbench.methods import get_method

    cfg = RunConfig(method="sce", noise="sym40", dataset="synthetic", epochs=3, meta_size=0, batch_size=64,
                    dataset_options={"n_train": 200, "n_test": 50})
    ckpts = tmp_path / "ckpt"

    class Stop(Exception):
        pass

    cls = get_method("sce")
    real_end = cls.on_epoch_end

    def stop_after_2(self, epoch, model):
        real_end(self, epoch, model)
        if epoch == 2:
            raise Stop

    monkeypatch.setattr(cls, "on_epoch_end", stop_after_2)
    with pytest.raises(Stop):
        train(cfg, device="cpu", checkpoint_dir=ckpts, checkpoint_every=0)
    monkeypatch.setattr(cls, "on_epoch_end", real_end)
    assert list(ckpts.iterdir())
    monkeypatch.setattr(cls, "version", cls.version + 1)  # the method was fixed since the checkpoint
    record = train(cfg, device="cpu", checkpoint_dir=ckpts, checkpoint_every=0)
    assert "resumed_from_epoch" not in record and len(record["history"]) == 3
    assert "of another config" in capsys.readouterr().err
