"""The README's "Python API" example runs as written: its ```python blocks are extracted and executed, in order,
in a fresh namespace inside a temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(text: str, heading: str) -> str:
    """The body of the level-2 section ``heading`` (up to the next level-2 heading)."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.S | re.M)


def test_python_api_section_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(section(README.read_text(), "Python API"))
    assert blocks, "the README's Python API section has no ```python block"
    monkeypatch.chdir(tmp_path)  # the example writes relative paths (demo-results/)
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, f"{README}:Python API", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "last_acc_pct" in out and "surrogate" in out
    assert len(list((tmp_path / "demo-results" / "runs").glob("*.json"))) == 2


def test_block_extraction_finds_only_that_section():
    text = ("## A\n```python\nx = 1\n```\n## Python API\ntext\n```python\ny = 2\n```\n```bash\nz\n```\n"
            "## B\n```python\nw\n```\n")
    assert python_blocks(section(text, "Python API")) == ["y = 2\n"]
