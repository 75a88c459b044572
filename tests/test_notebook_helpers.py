"""What notebooks lean on: the repository root as working folder, short stats tables,
and user errors shown as one line."""

import os
from pathlib import Path

import pytest

from nhr.repo_paths import checkout_root, work_from_repo_root
from nhr.runner import StageResult
from nhr.stats_table import stats_table
from tests.conftest import ROOT


def test_checkout_root_is_found_from_any_folder_inside(tmp_path):
    assert checkout_root(ROOT / "notebooks") == ROOT
    assert checkout_root(ROOT) == ROOT
    assert checkout_root(tmp_path) is None  # outside a checkout


def test_work_from_repo_root_moves_only_inside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")
    assert work_from_repo_root() == ROOT and Path.cwd() == ROOT
    assert Path("results/scratch").resolve() == ROOT / "results" / "scratch"
    monkeypatch.chdir(tmp_path)
    assert work_from_repo_root() == tmp_path.resolve() and Path(os.getcwd()) == tmp_path.resolve()


def test_stats_table_shows_the_few_numbers_and_skips_disabled_stages():
    result = StageResult(
        "prefilter",
        {
            "stage": "prefilter",
            "rows_in": 100,
            "rows_out": 100,
            "drops_by_reason": {"prefilter_aesthetic": 3, "prefilter_score": 40},
            "seconds": 1.23456,
            "usage": {"calls": 100, "cost_usd": 0.0123456},
            "settings": {"deep": {"nested": "config"}},
            "engine": {"kind": "local"},
        },
    )
    table = stats_table(result, None, {"stage": "mined", "rows_in": 57, "rows_out": 12})
    assert list(table.index) == ["prefilter", "mined"]
    assert list(table.columns) == [
        "rows_in", "rows_out", "dropped", "drops_by_reason", "seconds", "cost_usd"
    ]  # fmt: skip
    row = table.loc["prefilter"]
    assert (
        row["dropped"] == 43
        and row["drops_by_reason"] == "prefilter_score 40, prefilter_aesthetic 3"
    )
    assert row["seconds"] == 1.23 and row["cost_usd"] == 0.0123
    assert table.loc["mined", "dropped"] == 0 and table.loc["mined", "drops_by_reason"] == ""
    with pytest.raises(TypeError, match="stage result"):
        stats_table(42)


def test_a_user_error_shows_as_one_line_in_ipython(capsys, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell(
        f"from nhr.store import RunStore\nRunStore({str(tmp_path / 'run')!r}).tables.read('mined')"
    )
    shown = capsys.readouterr().out.strip().splitlines()
    assert len(shown) == 1, shown
    assert shown[0].startswith("RunFolderError: table 'mined' does not exist")
    shell.run_cell("1 / 0")  # any other error keeps its traceback
    assert "Traceback" in capsys.readouterr().out
