"""The committed tables are what the committed records regenerate, byte for byte: nobody edits them by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nlbench.cli import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the links in leaderboard.md are relative to the repository root


def test_leaderboard_md_regenerates_from_the_records(in_repo):
    res = CliRunner().invoke(app, ["leaderboard", "--out", "-"])
    assert res.exit_code == 0, res.output
    assert res.output == (ROOT / "leaderboard.md").read_text()


def test_committed_results_folder_is_clean(in_repo):
    res = CliRunner().invoke(app, ["results", "check"])
    assert res.exit_code == 0, res.output


def test_metasize_table_regenerates_from_its_records(in_repo):
    folder = ROOT / "results" / "sweeps" / "metasize"
    title = (folder / "table.md").read_text().splitlines()[0].removeprefix("# ")
    res = CliRunner().invoke(app, ["table", "--by", "meta_size", "--results-dir", str(folder), "--out", "-",
                                   "--title", title])
    assert res.exit_code == 0, res.output
    assert res.output == (folder / "table.md").read_text()
