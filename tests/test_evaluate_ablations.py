"""Ablations on a tiny grid, and the evaluation notebooks chained by `nhr run`."""

import json

import pytest

from nhr.config import PipelineConfig
from nhr.evaluate import ablations
from tests.conftest import TINY, nhr_cli

GRID = {
    "EVAL_ABLATION_N": [2],
    "EVAL_ABLATION_M": [1],
    "EVAL_ABLATION_THRESHOLDS": [4.3],
    "EVAL_ABLATION_SWITCHES": ["prefilter"],
}


def test_ablation_table_moves_with_each_parameter(tmp_path):
    cfg = PipelineConfig.from_params({**TINY, **GRID, "EVAL_ABLATION_DIR": str(tmp_path)})
    names = [v.name for v in ablations.ablation_grid(cfg)]
    assert names == ["base", "n_source_seeds-2", "m_edit_seeds-1", "threshold-4.3", "prefilter-off"]
    table = ablations.run_ablations(cfg)
    rows = {r["variant"]: r for r in table.to_dict("records")}
    base = rows["base"]
    assert base["accepted"] > 0 and 0 < base["yield"] < 1 and 0 < base["precision"] <= 1
    assert rows["n_source_seeds-2"]["edits"] < base["edits"]  # fewer sources, fewer edits
    assert rows["m_edit_seeds-1"]["edits"] < base["edits"]
    loose = rows["threshold-4.3"]  # same candidates, lower bar: more accepted
    assert loose["edits"] == base["edits"] and loose["accepted"] >= base["accepted"]
    assert loose["validator_recall"] >= base["validator_recall"]
    assert rows["prefilter-off"]["validator_calls"] > base["validator_calls"]
    assert rows["prefilter-off"]["calls_per_accepted"] > base["calls_per_accepted"]
    assert table.loc[0, "yield_vs_base"] == 0.0
    # a rerun resumes every variant (same folders, same numbers)
    assert ablations.run_ablations(cfg).equals(table)
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 5 and all(f.endswith(ablations.base_fingerprint(cfg)) for f in folders)


@pytest.mark.notebook
def test_evaluate_config_runs_the_three_notebooks(tiny_chain, tmp_path):
    run_dir = tmp_path / "evaluate"
    params = {
        "EVAL_RUN_DIR": str(tiny_chain.store.root),
        "EVAL_SAMPLES": 20,
        "N_PROMPTS": 3,
        "LONG_SIDE_MIN": 96,
        "LONG_SIDE_MAX": 128,
        "N_SOURCE_SEEDS": 3,
        "M_EDIT_SEEDS": 2,
        "EVAL_ABLATION_DIR": str(tmp_path / "ablations"),
        "EVAL_ABLATION_N": [2],
        "EVAL_ABLATION_M": [1],
        "EVAL_ABLATION_THRESHOLDS": [4.3],
        "EVAL_ABLATION_SWITCHES": [],
    }
    args = ["run", "configs/evaluate.yaml", "--run-dir", str(run_dir), "--no-progress"]
    for k, v in params.items():
        args += ["-p", k, json.dumps(v) if not isinstance(v, str) else v]
    proc = nhr_cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plots = run_dir / "plots"
    scores = json.loads((plots / "dataset_scores.json").read_text())
    assert scores["ranking"] == [tiny_chain.store.root.name, "rejected", "shuffled"]
    calib = json.loads((plots / "calibration.json").read_text())
    assert calib["per_dimension"]["adherence"]["mae"] < 1.0
    assert calib["at_threshold"]["threshold"] == 4.7 and "survival" in calib
    judges = {j["judge_id"]: j for j in calib["judges"]}  # configs/evaluate.yaml: three
    assert list(judges) == [
        "synthetic-judge-v1",
        "synthetic-judge-v1-noise0.5",
        "synthetic-judge-v1-noise2",
    ]
    for j in judges.values():
        assert {"mae_adherence", "spearman_adherence", "precision", "recall"} <= set(j)
        assert "threshold_for_precision_0_9" in j
    own = judges["synthetic-judge-v1"]
    assert own["mae_adherence"] == calib["per_dimension"]["adherence"]["mae"]
    assert (
        judges["synthetic-judge-v1-noise0.5"]["mae_adherence"]
        < judges["synthetic-judge-v1-noise2"]["mae_adherence"]
    )
    table = json.loads((plots / "ablations.json").read_text())["variants"]
    assert [r["variant"] for r in table] == [
        "base",
        "n_source_seeds-2",
        "m_edit_seeds-1",
        "threshold-4.3",
    ]
    assert (tmp_path / "ablations" / "plots" / "ablations.json").is_file()
    for name in (
        "dataset_scores",
        "calibration_scatter",
        "calibration_mae_by_bucket",
        "calibration_confusion",
        "calibration_precision_recall",
        "calibration_judges",
        "survival_curve",
        "ablations",
    ):
        assert (plots / f"{name}.png").stat().st_size > 5000, name
