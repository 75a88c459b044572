"""Config validation: unknown keys, ranges, types, and the run folder's saved config."""

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from nhr.config import PipelineConfig, RunConfig, reconcile
from nhr.errors import ConfigError, RunFolderError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_the_papers():
    cfg = PipelineConfig()
    assert (cfg.sources.n_source_seeds, cfg.edits.m_edit_seeds, cfg.sources.t2i_steps) == (10, 5, 4)
    assert (cfg.sources.long_side_min, cfg.sources.long_side_max, cfg.sources.aspect_max) == (860, 2200, 6.0)
    assert (cfg.edits.edit_steps_min, cfg.edits.edit_steps_max) == (18, 28)
    assert (cfg.filters.diff_threshold, cfg.filters.min_component_share, cfg.validation.threshold) == (40, 0.005, 4.7)


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"N_PROMPTS": 0}, "N_PROMPTS=0 is out of range"),
        ({"THRESHOLD": 5.5}, "THRESHOLD=5.5 is out of range"),
        ({"NOPE": 1}, "unknown parameter 'NOPE'"),
        ({"N_PROMPTS": "ten"}, "is not of type int"),
        ({"PREFILTER": 1}, "is not of type bool"),
        ({"T2I": "flux"}, "'flux' is not a known backend"),
        ({"LONG_SIDE_MIN": 900, "LONG_SIDE_MAX": 800}, "above long_side_max"),
        ({"EDIT_GUIDANCE": []}, "edit_guidance is empty"),
    ],
)
def test_bad_values_are_refused_with_a_fix(params, needle):
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_params(params)
    assert needle in str(err.value)
    assert " — " in str(err.value)  # problem — fix


def test_run_config_loads_and_overrides(tmp_path):
    cfg = RunConfig.load(ROOT / "configs/demo.yaml", {"n_prompts": 7}, tmp_path / "r")
    assert cfg.pipeline.prompts.n_prompts == 7
    assert cfg.run_dir == tmp_path / "r"
    assert all(p.is_file() for p in cfg.notebooks)


def test_run_config_missing_notebook(tmp_path):
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs/x.yaml"
    path.write_text("name: x\nnotebooks: [notebooks/nope.ipynb]\n")
    with pytest.raises(ConfigError, match=r"notebook notebooks/nope\.ipynb .* does not exist"):
        RunConfig.load(path)


def test_run_config_unknown_top_level_key(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nparms: {}\nnotebooks: []\n")
    with pytest.raises(ConfigError, match="unknown top-level key"):
        RunConfig.load(path)


def test_reconcile_refuses_a_mixed_run_folder(tmp_path):
    assert reconcile(tmp_path, {"N_PROMPTS": 5}).n_prompts == 5
    assert reconcile(tmp_path, {"N_SOURCE_SEEDS": 3}).n_prompts == 5  # saved value kept
    with pytest.raises(RunFolderError, match=r"N_PROMPTS: 5 → 6"):
        reconcile(tmp_path, {"N_PROMPTS": 6})


def test_notebook_defaults_are_valid_and_declared():
    """Every notebook's parameters are config fields (or run names) with valid defaults."""
    fields = {n.upper() for n in PipelineConfig.field_names()}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        params = papermill.inspect_notebook(str(nb))
        assert "RUN_DIR" in params, nb.name
        book = nbformat.read(nb, as_version=4)
        cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
        assigned = re.findall(r"^([A-Z_][A-Z0-9_]*) =", cell.source, flags=re.MULTILINE)
        assert sorted(assigned) == sorted(params), f"{nb.name}: papermill cannot read a line"
        extra = set(params) - fields - {"RUN_DIR", "RUN_NAME"}
        assert not extra, f"{nb.name} declares unknown parameters {extra}"
        values = {k: eval(v["default"]) for k, v in params.items() if k in fields}
        PipelineConfig.from_params(values)
