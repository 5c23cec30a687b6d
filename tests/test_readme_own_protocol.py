"""The README's "Your own protocol" example runs as written: its ```toml block is saved under the name on its
first line, and each line of its ```bash block runs as an `nlbench` command (in-process, through the CliRunner)
inside a temporary folder."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from nlbench.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
HEADING = "Your own protocol"


def section(text: str, heading: str) -> str:
    """The body of the level-2 section ``heading`` (up to the next level-2 heading)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", markdown, flags=re.S | re.M)


def commands(bash: str) -> list[list[str]]:
    """Each non-empty line as argv (shell comments dropped); every one must be an `nlbench` command."""
    out = []
    for line in bash.splitlines():
        argv = shlex.split(line, comments=True)
        if argv:
            assert argv[0] == "nlbench", line
            out.append(argv[1:])
    return out


def test_own_protocol_section_runs(tmp_path, monkeypatch):
    text = section(README.read_text(), HEADING)
    (toml,) = blocks(text, "toml")
    (bash,) = blocks(text, "bash")
    name = toml.splitlines()[0].removeprefix("#").strip()
    assert name.endswith(".toml"), "the toml block's first line names its file"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NLBENCH_DATA_ROOT", raising=False)
    Path(name).write_text(toml)
    outputs = []
    for argv in commands(bash):
        res = CliRunner().invoke(app, argv)
        assert res.exit_code == 0, (argv, res.output)
        outputs.append(res.stdout)
    dry_run = outputs[0].splitlines()
    assert len(dry_run) == 5 and all(line.startswith("todo ") for line in dry_run[:4]), outputs[0]
    assert "4 done, 0 skipped, 0 failed, 0 errors" in outputs[1]
    board = Path("my-protocol/leaderboard.md").read_text()
    assert "surrogate" in board and "erm" in board
    assert "2 done, 0 skipped" in outputs[3]
    sweep = Path("my-sweep/alpha.md").read_text()
    assert re.search(r"^\| 0\.3 \| surrogate \|", sweep, flags=re.M) and re.search(r"^\| 3\.0 \| surrogate \|",
                                                                                  sweep, flags=re.M), sweep


def test_extraction_finds_only_that_section():
    text = ("## A\n```bash\nnlbench x\n```\n## Your own protocol\n```toml\n# f.toml\na = 1\n```\n"
            "```bash\nnlbench grid --config f.toml  # run it\n\nnlbench table --by lr\n```\n## B\n```bash\nls\n```\n")
    body = section(text, HEADING)
    assert blocks(body, "toml") == ["# f.toml\na = 1\n"]
    assert commands(blocks(body, "bash")[0]) == [["grid", "--config", "f.toml"], ["table", "--by", "lr"]]
