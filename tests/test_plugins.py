"""Methods from other packages: found through the ``nlbench.methods`` entry-point group, without editing nlbench.

Each test builds an installed-looking package in ``tmp_path``: the module plus a ``*.dist-info`` folder with
METADATA and entry_points.txt, which ``importlib.metadata`` discovers once the folder is on ``sys.path``.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

import nlbench.methods as methods
from nlbench.benchmark.config import RunConfig
from nlbench.benchmark.harness import train
from nlbench.errors import NLBenchError
from nlbench.methods import METHODS, list_methods

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


def test_broken_plugin_is_a_user_error_naming_it(fresh_plugins):
    install_fake_package(fresh_plugins, "brokenpkg", "raise ImportError('needs torch-nightly')\n",
                         "brokenplug = brokenpkg.mymethod")
    with pytest.raises(NLBenchError, match=r"plugin 'brokenplug' \(brokenpkg.mymethod\).*needs torch-nightly"):
        list_methods()
