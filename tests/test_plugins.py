"""Methods from other packages: found through the ``nlbench.methods`` entry-point group, without editing nlbench.

Each test builds an installed-looking package in ``tmp_path``: the module plus a ``*.dist-info`` folder with
METADATA and entry_points.txt, which ``importlib.metadata`` discovers once the folder is on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import nlbench.methods as methods
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.errors import NLBenchError
from nlbench.methods import METHODS, Method, StepOutput, list_methods, register_method
from nlbench.testing import check_method

PLUGIN_METHOD = "myplug-halfloss"


def install_fake_package(root, package: str, module_source: str, entry_point: str, version: str = "0.1") -> None:
    pkg = root / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mymethod.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{package}-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[nlbench.methods]\n{entry_point}\n")


@pytest.fixture
def fresh_plugins(tmp_path, monkeypatch):
    """tmp_path on sys.path, plugins not yet loaded; afterwards the registry and sys.modules are as before."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(methods, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(methods, "PLUGIN_DISTS", {})  # what this test's plugins record, restored afterwards
    monkeypatch.setattr(methods, "FAILED_PLUGINS", {})
    before = set(sys.modules)
    yield tmp_path
    METHODS._items.pop(PLUGIN_METHOD, None)  # the registry has no public unregister: plugins are forever
    for mod in set(sys.modules) - before:
        if mod.startswith(("myplugpkg", "brokenpkg")):
            del sys.modules[mod]


def test_entry_point_plugin_is_listed_and_trains(fresh_plugins):
    install_fake_package(fresh_plugins, "myplugpkg", f"""
        import torch.nn.functional as F

        from nlbench.methods import Method, StepOutput, register_method


        @register_method("{PLUGIN_METHOD}")
        class HalfLoss(Method):
            def step(self, batch, model):
                return StepOutput(0.5 * F.cross_entropy(model(batch.x), batch.y))
        """, "myplug = myplugpkg.mymethod")
    assert PLUGIN_METHOD not in METHODS
    assert PLUGIN_METHOD in list_methods()
    assert "erm" in list_methods()
    cfg = RunConfig(method=PLUGIN_METHOD, noise="sym40", dataset="synthetic", epochs=1, meta_size=20,
                    batch_size=64, dataset_options={"n_train": 200, "n_test": 50})
    record = train(cfg, device="cpu")
    assert record["status"] == "ok" and record["method"] == PLUGIN_METHOD
    assert 0 <= record["final"]["last_acc"] <= 1


BROKEN_WARNING = ("warning: method plugin 'brokenplug' (brokenpkg.mymethod) failed to load: "
                  "needs torch-nightly")


def test_broken_plugin_warns_once_and_is_skipped(fresh_plugins, capsys):
    install_fake_package(fresh_plugins, "brokenpkg", "raise ImportError('needs torch-nightly')\n",
                         "brokenplug = brokenpkg.mymethod")
    names = list_methods()
    assert {"erm", "surrogate", "oracle"} <= set(names)  # the built-in methods survive a broken plugin
    assert list_methods() == names  # loaded once: one warning, not one per lookup
    assert capsys.readouterr().err.splitlines() == [BROKEN_WARNING]
    with pytest.raises(NLBenchError, match=r"unknown method 'brokenplug-x'.*failed to load: brokenplug"):
        methods.get_method("brokenplug-x")


def test_broken_plugin_does_not_break_the_cli(tmp_path):
    """``nlbench run --method erm`` in a fresh interpreter with a broken plugin installed: the run works and
    stderr holds exactly the one warning line."""
    site = tmp_path / "site"
    site.mkdir()
    install_fake_package(site, "brokenpkg", "raise ImportError('needs torch-nightly')\n",
                         "brokenplug = brokenpkg.mymethod")
    env = {k: v for k, v in os.environ.items() if k != "NLBENCH_DATA_ROOT"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "nlbench.cli", "run", "--method", "erm", "--dataset", "synthetic",
                           "--data-opt", "n_train=200", "--data-opt", "n_test=50", "--epochs", "1", "--meta-size",
                           "20", "--device", "cpu", "--no-progress", "--results-dir", str(tmp_path / "r"), "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [BROKEN_WARNING]
    rec = json.loads(proc.stdout)
    assert rec["status"] == "ok" and rec["method"] == "erm" and rec["env"]["plugins"] == {}


def test_plugin_version_is_recorded_and_check_method_passes(fresh_plugins):
    install_fake_package(fresh_plugins, "myplugpkg", f"""
        import torch.nn.functional as F

        from nlbench.methods import Method, StepOutput, register_method


        @register_method("{PLUGIN_METHOD}")
        class HalfLoss(Method):
            \"\"\"Half the cross-entropy.\"\"\"

            def __init__(self, scale: float = 0.5):
                super().__init__()
                self.scale = scale

            def step(self, batch, model):
                return StepOutput(self.scale * F.cross_entropy(model(batch.x), batch.y))

            def options(self):
                return {{"scale": self.scale}}
        """, "myplug = myplugpkg.mymethod", version="1.2.3")
    assert methods.plugin_versions() == {PLUGIN_METHOD: "myplugpkg==1.2.3"}
    record = check_method(PLUGIN_METHOD, scale=0.25)
    assert record["env"]["plugins"] == {PLUGIN_METHOD: "myplugpkg==1.2.3"}
    assert record["method_options"] == {"scale": 0.25}


def test_check_method_fails_loudly_on_a_bad_method(monkeypatch):
    """The helper must be able to fail: a method whose loss is NaN from the start."""
    import torch

    @register_method("test-nan-loss")
    class NaNLoss(Method):
        def step(self, batch, model):
            return StepOutput(model(batch.x).sum() * torch.tensor(float("nan")))

    try:
        with pytest.raises(AssertionError, match="test-nan-loss: run failed: .*non-finite training loss"):
            check_method("test-nan-loss")
    finally:
        METHODS._items.pop("test-nan-loss", None)
