"""Group difficulty in the synthetic world (SYNTHETIC_GROUP_SPREAD) and the search
diagnostic that every mining run records."""

import math
from pathlib import Path

import numpy as np
import pytest

from nhr.backends.synthetic.editor import (
    GROUP_SPREADS,
    SyntheticEditor,
    outcome_probabilities,
)
from nhr.backends.synthetic.world import PAPER_WORLD
from nhr.config import PipelineConfig
from nhr.errors import ConfigError
from nhr.pipeline import Pipeline
from nhr.search_diagnostic import diagnose, intra_group_correlation
from nhr.summary import build_summary


def test_diagnose_counts_passes_per_group_and_reference_searches():
    # group a: passes at seeds 1 and 2; b: never; c: passes at seed 0 only
    ids = [f"s-i0-e{m}" for m in range(3)] + ["t-i1-e0", "t-i1-e1"] + ["s-i1-e0", "s-i1-e1"]
    passed = [False, True, True, False, False, True, False]
    d = diagnose(ids, np.array(passed))
    assert (d["groups"], d["generations"], d["passes"]) == (3, 7, 3)
    assert d["pass_rate"] == round(3 / 7, 4)
    assert d["argmax_drop"] == round(1 - 2 / 3, 4)  # two groups hold the three passes
    assert d["passes_per_group"]["observed"] == [1, 1, 1, 0]
    # sizes 3, 2, 2 at rate 3/7: expected groups with no pass under independence
    q = 1 - 3 / 7
    assert d["passes_per_group"]["independent"][0] == round(q**3 + 2 * q**2, 2)
    assert d["never_pass_share"] == round(1 / 3, 4)
    # first pass: a stops at seed 1 (2 gens), b makes both (2), c stops at seed 0 (1)
    assert d["generations_first_pass"] == 5
    assert d["generations_oracle"] == 2
    # seed 0: c of a, b, c passes; seed 1: a of a, b (c passed already); seed 2: none left
    assert d["pass_rate_by_seed"] == [round(1 / 3, 4), 0.5, None]
    early = diagnose(ids, np.array(passed), stops_early=True)
    assert early["intra_group_correlation"] is None and early["passes_per_group"] is None
    assert early["pass_rate_by_seed"] == d["pass_rate_by_seed"]


def test_intra_group_correlation_tells_clustered_from_independent():
    rng = np.random.default_rng(0)
    sizes = np.full(2000, 5.0)
    independent = rng.binomial(5, 0.2, size=2000).astype(float)
    clustered = np.where(rng.random(2000) < 0.2, 5.0, 0.0)  # all or nothing
    assert abs(intra_group_correlation(sizes, independent)) < 0.05
    assert intra_group_correlation(sizes, clustered) > 0.95


def test_spread_draws_pair_chances_around_the_rate(tmp_path: Path):
    from nhr.backends.synthetic.truth import SyntheticTruth

    truth = SyntheticTruth(tmp_path)
    plain = SyntheticEditor(truth)
    spread = SyntheticEditor(truth, spread=0.5)
    assert plain.model_id == "synthetic-editor-v1"  # the default world's rows unchanged
    assert spread.model_id == "synthetic-editor-v1-spread-0.5"
    assert SyntheticEditor(truth, spread="paper").model_id.endswith("-spread-paper")
    assert plain.probabilities("d", "add a red circle", 28, 3.5) == outcome_probabilities(28, 3.5)
    rate = outcome_probabilities(28, 3.5)["correct"]
    chances = np.array(
        [spread.probabilities(f"d{i}", "x", 28, 3.5)["correct"] for i in range(3000)]
    )
    assert abs(chances.mean() - rate) < 0.02
    # Bernoulli outcomes of pairs with these chances: their intra-pair correlation
    # var(chance) / (rate (1 - rate)) is the spread
    assert abs(chances.var() / (rate * (1 - rate)) - 0.5) < 0.05
    one = spread.probabilities("d1", "x", 28, 3.5)
    assert math.isclose(sum(one.values()), 1.0)
    with pytest.raises(ValueError, match="named setting"):
        SyntheticEditor(truth, spread="nope")


def test_config_takes_a_spread_or_a_named_setting():
    assert PipelineConfig.from_params({}).synthetic.synthetic_group_spread == 0.0
    for value in (0, 0.3, *GROUP_SPREADS):
        cfg = PipelineConfig.from_params({"SYNTHETIC_GROUP_SPREAD": value})
        assert cfg.synthetic.synthetic_group_spread == value
    for bad in (1.0, -0.1, "wide"):
        with pytest.raises(ConfigError, match="SYNTHETIC_GROUP_SPREAD"):
            PipelineConfig.from_params({"SYNTHETIC_GROUP_SPREAD": bad})


def test_paper_world_reproduces_the_papers_funnel_on_a_small_run(tmp_path: Path):
    """The grid under the paper's scheduler (K 5, N 19, M 5, 48.5 jobs per prompt drawn
    uniformly from the grid) in the paper world: 15.3 % pass, argmax drops 31 % (the
    paper's tolerances, widened by this small run's sampling error; ``bench_mining.py``
    measures it on a larger grid)."""
    prompts = 6
    params = {
        **PAPER_WORLD,
        "N_PROMPTS": prompts,
        "K_INSTRUCTIONS": 5,
        "N_SOURCE_SEEDS": 19,
        "M_EDIT_SEEDS": 5,
        "MAX_EDIT_JOBS": round(prompts * 48.54),
        "LONG_SIDE_MIN": 96,
        "LONG_SIDE_MAX": 128,
        "ASPECT_MAX": 2.0,
        "RESOLUTIONS": "kontext",
        "EDIT_STEPS_LEVELS": 2,
        "EDIT_GUIDANCE": [2.5, 3.5],
        "THRESHOLD": 4.7,
        "BATCH_SIZE": 32,
    }
    pipe = Pipeline.open(tmp_path / "run", params, progress=False)
    for step in ("prompts", "sources", "gate"):
        getattr(pipe, step)()
    stats = pipe.mine().stats
    d = stats["diagnostic"]  # every run records it
    assert d["generations"] == stats["candidates"] == pipe.tables.count("candidates")
    rate, drop, n, passes = d["pass_rate"], d["argmax_drop"], d["generations"], d["passes"]
    assert abs(rate - 0.153) <= 0.02 + 2.5 * math.sqrt(0.153 * 0.847 / n)
    assert abs(drop - 0.31) <= 0.04 + 2.5 * math.sqrt(0.31 * 0.69 / passes)
    # passes cluster: more groups never pass than independent seeds would leave
    assert d["never_pass_share"] > d["never_pass_share_independent"]
    assert d["intra_group_correlation"] > 0.3
    assert d["pass_rate_by_seed"][0] > d["pass_rate_by_seed"][1]  # a failed seed tells
    assert build_summary(pipe.tables, pipe.cfg, with_truth=False)["search_diagnostic"] == d
