"""Help and listings: plain one-line descriptions (no lost matrix indices, no reST, no runs of spaces), a
description for every model, what each method reads, defaults visible in `run -h`, shell completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nlbench.cli import app
from nlbench.cli.core import registry_rows
from nlbench.methods import get_method, list_methods
from nlbench.models import MODELS

runner = CliRunner()


def rows_of(kind: str) -> dict[str, tuple[str, ...]]:
    return {row[0]: row[1:] for row in registry_rows(kind)}


@pytest.mark.parametrize("kind", ["methods", "noises", "datasets", "models"])
def test_descriptions_are_plain_single_lines(kind):
    for name, (desc, *_) in rows_of(kind).items():
        assert desc.strip(), f"{kind} {name!r} has no description"
        assert "``" not in desc and not re.search(r":[a-z]+:`", desc), (name, desc)
        assert "  " not in desc and "\n" not in desc, (name, desc)


def test_every_model_has_a_description():
    rows = rows_of("models")
    assert set(rows) == set(MODELS.list())
    assert "LeNet-5" in rows["lenet"][0] and "ResNet-50" in rows["resnet50"][0] and "MLP" in rows["mlp"][0]


def test_list_noises_keeps_matrix_indices():
    res = runner.invoke(app, ["list", "noises"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.replace("│", " ").split())
    assert "T[i,i] = 1-r, T[i,(i+1) mod C] = r" in flat  # pairflip: rich markup used to eat the brackets
    assert "T[i,i] = 1-r, T[i,j] = r/(C-1)" in flat
    assert "sends r to map[c]" in flat


def test_list_methods_shows_what_each_reads():
    rows = rows_of("methods")
    assert set(rows) == set(list_methods())
    for name, (desc, reads) in rows.items():
        cls = get_method(name)
        assert desc.startswith(cls.summary.split()[0]), (name, desc)
        assert ("meta set" in reads) is cls.uses_meta, (name, reads)
        assert ("noise rate" in reads) is cls.uses_noise_rate, (name, reads)
        assert ("ground truth [ORACLE]" in reads) is cls.oracle, (name, reads)
        assert reads == "-" or reads.replace("[ORACLE]", "").replace("[NOISE RATE]", "").strip()
    assert rows["erm"][1] == "-" and rows["surrogate"][1] == "meta set" and "(alias: fbr)" in rows["surrogate"][0]
    res = runner.invoke(app, ["list", "methods"])
    assert res.exit_code == 0 and "reads" in res.stdout and "ground truth [ORACLE]" in res.stdout


def test_run_help_shows_the_defaults():
    res = runner.invoke(app, ["run", "-h"], terminal_width=200)
    assert res.exit_code == 0, res.output
    flat = " ".join(res.stdout.replace("│", " ").split())
    assert "Dataset name [default: fashion-mnist]." in flat and "Dataset name ." not in flat
    for text in ("Training epochs [default: 3].", "Batch size [default: 128].", "SGD momentum [default: 0.9].",
                 "Weight decay [default: 0.0005].", "Clean meta-set size, carved before noise [default: 1000]."):
        assert text in flat, text
    assert not re.search(r"\w \.", flat), re.search(r".{20}\w \..{5}", flat).group(0)


def test_shell_completion():
    res = runner.invoke(app, ["-h"], terminal_width=200)
    assert "--install-completion" in res.stdout and "--show-completion" in res.stdout
    env = {**os.environ, "_NLBENCH_COMPLETE": "complete_bash", "COMP_WORDS": "nlbench list ", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'nlbench'; "
                           "from nlbench.cli import main; main()"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.stdout.split() == ["methods", "noises", "datasets", "models", "presets"], proc.stderr
