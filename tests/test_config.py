"""Config: blocks, validation, runtime vs output fields, resume rules, settings hashes."""

import re
import subprocess
import sys
import typing
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from nhr.backends import names
from nhr.backends.registry import REGISTRY
from nhr.config import BLOCKS, FIELDS, OUTPUT, RUNTIME, PipelineConfig, RunConfig, reconcile
from nhr.errors import ConfigError, RunFolderError
from nhr.pipeline import Pipeline
from nhr.runner import settings_hash
from nhr.steps import STAGES

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_FIELDS = sorted(n for n in FIELDS if PipelineConfig.kind(n) == OUTPUT)
RUNTIME_FIELDS = sorted(n for n in FIELDS if PipelineConfig.kind(n) == RUNTIME)
# configs that put each backend family to use, so its block counts in the stages' settings
FAMILIES = {
    "synthetic": {},
    "diffusers": {"T2I": "diffusers", "EDITOR": "flux-kontext"},
    "gemini": {
        r.upper(): "gemini"
        for r in ("prompter", "gate_judge", "prefilter_judge", "validator", "inverter")
    },
    "openai": {
        r.upper(): "openai"
        for r in ("prompter", "gate_judge", "prefilter_judge", "validator", "inverter")
    },
}


# free-text fields whose values are checked: another valid value of each
VALID_STRINGS = {"image_background": "black"}


def other_value(name: str) -> typing.Any:
    """A valid value of flat field ``name`` that differs from its default."""
    block, fld = FIELDS[name]
    info = BLOCKS[block].model_fields[fld]
    meta, default = info.json_schema_extra, info.default
    hint = info.annotation
    if meta["role"]:
        return next(n for n in names.known(name) if n != default)
    if typing.get_origin(hint) is tuple:
        if meta["choices"]:
            fresh = [c for c in meta["choices"] if c not in default]
            return [*default, fresh[0]] if fresh else list(default[:-1])
        base = typing.get_args(hint)[0]
        extra = {str: "x", int: meta["lo"], float: meta["lo"]}[base]
        return [*default, extra]
    if meta["choices"]:
        return next(c for c in meta["choices"] if c != default)
    if hint is bool:
        return not default
    if hint is str:
        return VALID_STRINGS.get(name, default + "x")
    step = 1 if hint is int else 0.1
    hi = meta["hi"]
    return default + step if hi is None or default + step <= hi else default - step


def test_defaults_are_the_papers():
    cfg = PipelineConfig()
    src, edits = cfg.sources, cfg.edits
    assert (src.n_source_seeds, edits.m_edit_seeds, src.t2i_steps) == (10, 5, 4)
    assert (src.long_side_min, src.long_side_max, src.aspect_max) == (860, 2200, 6.0)
    assert (edits.edit_steps_min, edits.edit_steps_max) == (18, 28)
    assert cfg.filters.diff_threshold == 40 and cfg.filters.min_component_share == 0.005
    assert cfg.validation.threshold == 4.7


def test_flat_names_map_onto_blocks_and_back():
    assert len(FIELDS) >= 100
    cfg = PipelineConfig.from_params({"M_EDIT_SEEDS": 3, "edit_guidance": [2.0, 3.0]})
    assert cfg.edits.m_edit_seeds == 3 and cfg.edits.edit_guidance == (2.0, 3.0)
    assert cfg.value("M_EDIT_SEEDS") == 3 and cfg.value("editor") == "synthetic"
    params = cfg.to_params()
    assert set(params) == {n.upper() for n in FIELDS}
    assert params["EDIT_GUIDANCE"] == [2.0, 3.0]
    assert PipelineConfig.from_params(params) == cfg
    assert PipelineConfig.params_in({"M_EDIT_SEEDS": 1, "RUN_DIR": "x", "os": 0}) == {
        "M_EDIT_SEEDS": 1
    }
    assert cfg.replace(N_PROMPTS=9).prompts.n_prompts == 9 and cfg.prompts.n_prompts == 100


def test_the_constructor_takes_flat_names_and_blocks():
    cfg = PipelineConfig(editor="flux-kontext", EDIT_MAX_AREA=4096, run={"seed": 3})
    assert cfg.edits.editor == "flux-kontext" and cfg.edits.edit_max_area == 4096
    assert cfg.run.seed == 3 and cfg == PipelineConfig.from_params(cfg.to_params())
    with pytest.raises(ConfigError, match="unknown parameter 'nope'"):
        PipelineConfig(nope=1)


def test_blocks_are_frozen():
    cfg = PipelineConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.edits.m_edit_seeds = 2
    with pytest.raises(Exception, match="frozen"):
        cfg.edits = cfg.sources


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"N_PROMPTS": 0}, "N_PROMPTS=0 is out of range"),
        ({"THRESHOLD": 5.5}, "THRESHOLD=5.5 is out of range"),
        ({"NOPE": 1}, "unknown parameter 'NOPE'"),
        ({"N_PROMPTS": "ten"}, "is not of type int"),
        ({"PREFILTER": 1}, "is not of type bool"),
        ({"T2I": "flux"}, "'flux' is not a known backend"),
        ({"DIFFUSERS_DTYPE": "int8"}, "DIFFUSERS_DTYPE='int8' is not an allowed value"),
        ({"EDIT_GUIDANCE": 2.5}, "EDIT_GUIDANCE=2.5 is not a list"),
        ({"EDIT_GUIDANCE": [2.5, 99.0]}, "EDIT_GUIDANCE=99.0 is out of range"),
        ({"GEMINI_BATCH_ROLES": ["editor"]}, "GEMINI_BATCH_ROLES='editor' is not an allowed"),
        ({"LONG_SIDE_MIN": 900, "LONG_SIDE_MAX": 800}, "set LONG_SIDE_MIN <= LONG_SIDE_MAX"),
        ({"EDIT_STEPS_MIN": 30}, "set EDIT_STEPS_MIN <= EDIT_STEPS_MAX"),
        ({"EVAL_SURVIVAL_MIN": 5.0, "EVAL_SURVIVAL_MAX": 4.0}, "EVAL_SURVIVAL_MIN <= "),
        ({"EDIT_GUIDANCE": []}, "edit_guidance is empty"),
    ],
)
def test_bad_values_are_refused_with_a_fix(params, needle):
    with pytest.raises(ConfigError) as err:
        PipelineConfig.from_params(params)
    assert needle in str(err.value)
    assert " — " in str(err.value)  # problem — fix


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_field_takes_another_valid_value(name):
    """The values the resume tests below use are valid, and differ from the default."""
    cfg = PipelineConfig.from_params({name: other_value(name)})
    assert cfg.to_params()[name.upper()] != PipelineConfig().to_params()[name.upper()]


def test_run_config_loads_and_overrides(tmp_path):
    cfg = RunConfig.load(ROOT / "configs/demo.yaml", {"n_prompts": 7}, tmp_path / "r")
    assert cfg.pipeline.prompts.n_prompts == 7
    assert cfg.run_dir == tmp_path / "r"
    assert all(p.is_file() for p in cfg.notebooks)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_are_valid(path):
    assert RunConfig.load(path).pipeline.to_params()


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
    assert reconcile(tmp_path, {"N_PROMPTS": 5}).prompts.n_prompts == 5
    assert reconcile(tmp_path, {"N_SOURCE_SEEDS": 3}).prompts.n_prompts == 5  # value kept
    with pytest.raises(RunFolderError, match=r"N_PROMPTS: 5 → 6"):
        reconcile(tmp_path, {"N_PROMPTS": 6})


@pytest.mark.parametrize("name", OUTPUT_FIELDS)
def test_a_changed_output_field_is_refused_on_resume(tmp_path, name):
    reconcile(tmp_path, {name: PipelineConfig().value(name)})
    with pytest.raises(RunFolderError) as err:
        reconcile(tmp_path, {name: other_value(name)})
    assert f"{name.upper()}: " in str(err.value) and "changes outputs" in str(err.value)
    assert "new run folder" in err.value.fix and name.upper() in err.value.fix


@pytest.mark.parametrize("name", RUNTIME_FIELDS)
def test_a_changed_runtime_field_resumes_and_is_recorded(tmp_path, name):
    reconcile(tmp_path, {"N_PROMPTS": 5, name: PipelineConfig().value(name)})
    new = other_value(name)
    cfg = reconcile(tmp_path, {"N_PROMPTS": 5, name: new})
    assert cfg.to_params()[name.upper()] == new and cfg.prompts.n_prompts == 5
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved[name.upper()] == new
    assert reconcile(tmp_path, {}).to_params()[name.upper()] == new


def _hashes(params: dict) -> dict[str, str]:
    cfg = PipelineConfig.from_params(params)
    return {stage: settings_hash(cfg.stage_settings(stage)) for stage in STAGES}


@pytest.mark.parametrize("name", OUTPUT_FIELDS)
def test_an_output_field_changes_the_settings_hash_of_a_stage(name):
    """Every output-changing field changes the settings hash of some stage, under a config
    whose backends read its block (so no such field can be left out of the hashes)."""
    changed = set()
    for family in FAMILIES.values():
        if name.upper() in family:
            continue
        base, other = _hashes(family), _hashes({**family, name: other_value(name)})
        changed |= {s for s in STAGES if base[s] != other[s]}
    assert changed, f"{name.upper()} changes no stage's settings hash"


@pytest.mark.parametrize("name", RUNTIME_FIELDS)
def test_a_runtime_field_changes_no_settings_hash(name):
    for family in FAMILIES.values():
        assert _hashes(family) == _hashes({**family, name: other_value(name)}), name


@pytest.mark.parametrize(
    ("params", "field", "stage"),
    [
        (FAMILIES["diffusers"], "DIFFUSERS_DTYPE", "candidates"),
        (FAMILIES["diffusers"], "DIFFUSERS_DTYPE", "sources"),
        (FAMILIES["diffusers"], "EDIT_MAX_AREA", "candidates"),
        (FAMILIES["diffusers"], "EDIT_PREFERRED_RESOLUTIONS", "candidates"),
        (FAMILIES["diffusers"], "PIX2PIX_IMAGE_GUIDANCE", "candidates"),
        (FAMILIES["gemini"], "API_IMAGE_MAX_SIDE", "validator"),
        (FAMILIES["gemini"], "GEMINI_THINKING_BUDGET", "plausibility"),
        (FAMILIES["openai"], "OPENAI_DEFAULT_MODEL", "prefilter"),
        (FAMILIES["gemini"], "PROMPT_EDIT_OPS", "prompts"),
        ({}, "SYNTHETIC_JUDGE_NOISE", "validator"),
        ({}, "VALIDATOR_MODEL", "backward"),
        ({}, "SEED", "lowlevel"),
    ],
)
def test_backend_settings_are_in_the_stage_hash(params, field, stage):
    assert _hashes(params)[stage] != _hashes({**params, field: other_value(field.lower())})[stage]


def test_a_backend_family_counts_only_where_it_is_used():
    """With the synthetic editor, diffusers memory and precision knobs leave edits alone."""
    assert _hashes({})["candidates"] == _hashes({"DIFFUSERS_DTYPE": "float16"})["candidates"]
    assert "diffusers" in PipelineConfig.from_params(FAMILIES["diffusers"]).stage_blocks(
        "candidates"
    )


def test_every_block_is_read_by_a_stage():
    cfg_blocks = set()
    for family in FAMILIES.values():
        cfg = PipelineConfig.from_params(family)
        cfg_blocks |= {b for s in STAGES for b in cfg.stage_blocks(s)}
    # the engine block says where stages run (local or Ray), never what they output
    assert cfg_blocks == set(BLOCKS) - {"engine"}


def test_the_runner_refuses_an_output_change_and_resumes_a_runtime_change(tmp_path):
    """End to end through the pipeline's runner (bypassing the saved config)."""
    tiny = {"N_PROMPTS": 5, "BATCH_SIZE": 2}
    first = Pipeline(tmp_path, PipelineConfig.from_params(tiny), progress=False).prompts()
    assert first.stats["settings"]["config"]["synthetic"]["synthetic_judge_noise"] == 1.0
    runtime = PipelineConfig.from_params({**tiny, "BATCH_SIZE": 3, "API_CONCURRENCY": 2})
    again = Pipeline(tmp_path, runtime, progress=False).prompts()
    assert again.stats["resumed_rows"] == 5 and again.stats["processed_rows"] == 0
    output = PipelineConfig.from_params({**tiny, "SYNTHETIC_JUDGE_NOISE": 0.5})
    with pytest.raises(RunFolderError, match="written with other settings"):
        Pipeline(tmp_path, output, progress=False).prompts()


def test_config_tables_show_a_stages_blocks():
    cfg = PipelineConfig.from_params(FAMILIES["diffusers"])
    table = cfg.table("candidates")
    blocks = list(dict.fromkeys(table.index.get_level_values("block")))
    assert blocks == ["run", "edits", "search", "diffusers"]
    assert table.loc[("diffusers", "DIFFUSERS_MAX_BATCH"), "kind"] == RUNTIME
    assert table.loc[("edits", "EDIT_MAX_AREA"), "kind"] == OUTPUT
    assert len(cfg.table("evaluation")) == len(BLOCKS["evaluation"].model_fields)
    with pytest.raises(ConfigError, match="unknown config block or stage 'nope'"):
        cfg.table("nope")


def test_backend_names_match_the_registry():
    assert set(REGISTRY) == set(names.ROLES)
    for role in names.ROLES:
        assert set(REGISTRY[role]) == set(names.known(role)), role
        assert all(n in names.FAMILY_BLOCKS for n in names.known(role))
    assert all(b in BLOCKS for bs in names.FAMILY_BLOCKS.values() for b in bs)


def test_config_imports_no_backend_module():
    """The registry and api_roles import the config, never the reverse (no import circle)."""
    code = "import sys, nhr.config; print(sorted(m for m in sys.modules if m.startswith('nhr')))"
    probe = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(eval(probe.stdout))
    assert loaded == {
        "nhr",
        "nhr.allocators",  # what ``import nhr`` sets up first
        "nhr.config",
        "nhr.colours",
        "nhr.errors",
        "nhr.backends",
        "nhr.backends.names",
    }


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


def test_notebooks_show_config_blocks_not_the_whole_config():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = nbformat.read(nb, as_version=4)
        sources = [c.source.strip() for c in book.cells if c.cell_type == "code"]
        assert "pipe.cfg" not in sources, f"{nb.name} prints the whole config"
        assert any("cfg.table(" in s for s in sources), f"{nb.name} shows no config"
