"""The mining loop: grid = the stages run one by one; adaptive rounds close groups on a
pass or as hopeless; caps draw uniformly from the open work; SIGKILL then rerun."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import chisquare

from nhr.mining import (
    HOPELESS,
    OPEN,
    PASSED,
    Decisions,
    MiningLoop,
    SearchRule,
    SearchState,
    SeedFeed,
    smoothed_best,
)
from nhr.pipeline import Pipeline
from nhr.stages.edits import EditStage
from nhr.store import RunStore
from tests.test_plan import _plan

ROOT = Path(__file__).resolve().parent.parent
SMALL = {
    "N_PROMPTS": 4,
    "K_INSTRUCTIONS": 4,
    "N_SOURCE_SEEDS": 2,
    "LONG_SIDE_MIN": 96,
    "LONG_SIDE_MAX": 128,
    "ASPECT_MAX": 3.0,
    "M_EDIT_SEEDS": 3,
    "EDIT_GUIDANCE": [2.5, 3.5],
    "BATCH_SIZE": 4,
    "SHARD_FLUSH_SECONDS": 0.0,
}
TABLES = ("candidates", "prefilter", "lowlevel", "validator")


def _rows(run_dir: Path, table: str) -> list[str]:
    """A table's rows as sorted JSON strings, without the timing column."""
    tables = RunStore(run_dir).tables
    out = []
    for row in tables.read(table).to_pylist() if tables.exists(table) else []:
        row.pop("seconds", None)
        out.append(json.dumps(row, sort_keys=True))
    return sorted(out)


def _by_id(run_dir: Path, table: str, key: str) -> dict[str, dict]:
    return {r[key]: r for r in RunStore(run_dir).tables.read(table).to_pylist()}


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    """A run folder whose prompts, sources and gate are done (copied for each test)."""
    run = tmp_path_factory.mktemp("mining") / "gated"
    pipe = Pipeline.open(run, SMALL, progress=False)
    pipe.run_chain("gate")
    (run / "config.yaml").unlink()  # each copy records its own search parameters
    return run


def _mine(gated: Path, dest: Path, by_round: bool = False, **params) -> Pipeline:
    """A copy of the gated run at ``dest``, mined streamed (``Pipeline.mine``) or round
    by round (the loop's ``by_round``)."""
    shutil.copytree(gated, dest)
    pipe = Pipeline.open(dest, {**SMALL, **params}, progress=False)
    if by_round:
        MiningLoop(
            pipe.runner,
            pipe.tables,
            pipe.edit_jobs(),
            pipe.mining_links(),
            SearchRule.from_config(pipe.cfg),
        ).run(by_round=True)
    else:
        pipe.mine()
    return pipe


@pytest.fixture(scope="module")
def grid(gated, tmp_path_factory) -> Path:
    """The loop under SEARCH grid."""
    run = tmp_path_factory.mktemp("mining") / "grid"
    _mine(gated, run, SEARCH="grid")
    return run


def _groups(run_dir: Path) -> dict[str, list[tuple[int, bool]]]:
    """(seed index, validator passed) of each group's candidates, by group."""
    passed = {k: v["passed"] for k, v in _by_id(run_dir, "validator", "subject_id").items()}
    out: dict[str, list[tuple[int, bool]]] = {}
    for cid in _by_id(run_dir, "candidates", "candidate_id"):
        group, m = cid.rsplit("-e", 1)
        out.setdefault(group, []).append((int(m), passed.get(cid, False)))
    return {g: sorted(v) for g, v in out.items()}


def test_grid_gives_the_rows_of_the_stages_run_one_by_one(gated, grid, tmp_path):
    one_by_one = tmp_path / "one-by-one"
    shutil.copytree(gated, one_by_one)
    pipe = Pipeline.open(one_by_one, {**SMALL, "SEARCH": "grid"}, progress=False)
    plan = pipe.edit_jobs()
    pipe.runner.run(EditStage(pipe.backends.editor, pipe.store.blobs), plan)
    pipe.prefilter()
    pipe.lowlevel()
    pipe.validate()
    for table in TABLES:
        assert _rows(grid, table) == _rows(one_by_one, table), table
    assert len(_rows(grid, "candidates")) == len(plan) == plan.grid_size
    mining = RunStore(grid).read_stats("mining")
    assert [r["seeds"] for r in mining["rounds"]] == [[0, 3]]
    assert mining["jobs"] == len(plan) and mining["groups_by_state"]["open"] == 0


def test_adaptive_closes_a_group_on_a_pass_and_stops_its_seeds(gated, grid, tmp_path):
    """Without the hopeless rule and with drawn guidance, each group's candidates are
    the grid's up to its first pass: the same groups are accepted from fewer edits."""
    run = tmp_path / "adaptive"
    pipe = _mine(gated, run, SEARCH="adaptive", SEARCH_HOPELESS_AFTER=0)
    full, adaptive = _groups(grid), _groups(run)
    assert set(adaptive) == set(full)
    for group, seeds in full.items():
        first = next((m for m, ok in seeds if ok), None)
        want = seeds if first is None else seeds[: first + 1]
        assert adaptive[group] == want, group
    assert any(len(v) < 3 for v in adaptive.values())
    grid_rows = set(_rows(grid, "candidates"))
    assert set(_rows(run, "candidates")) <= grid_rows  # the very jobs of the grid
    mining = pipe.mining()
    assert [r["seeds"] for r in mining["rounds"]] == [[0, 1], [1, 2], [2, 3]]
    closed = sum(r["closed_passed"] for r in mining["rounds"])
    assert (
        closed
        == mining["groups_by_state"]["passed"]
        == sum(any(ok for _, ok in v) for v in full.values())
    )
    opens = [r["groups_open"] for r in mining["rounds"]]
    assert opens == sorted(opens, reverse=True) and opens[0] == len(full)
    assert pipe.mine().candidates.stats["processed_rows"] == 0  # a rerun is a no-op


def test_the_hopeless_rule_closes_groups_whose_scores_are_low(gated, tmp_path):
    run = tmp_path / "hopeless"
    pipe = _mine(gated, run, SEARCH="adaptive", SEARCH_HOPELESS_AFTER=1, SEARCH_HOPELESS_BELOW=5.0)
    mining = pipe.mining()
    assert mining["rounds"][0]["closed_hopeless"] == mining["groups_by_state"]["hopeless"] > 0
    groups = _groups(run)
    one = [g for g, v in groups.items() if len(v) == 1 and not v[0][1]]
    assert len(one) >= mining["groups_by_state"]["hopeless"]


def _judged(rule, guidance, passed, score, r):
    """A round-by-round search state after these decisions (groups 0 0 1 1 2 3 3 4 4 of
    6, all in round 0), closed as after round ``r``."""
    state = SearchState(rule, 6, by_round=True)
    for g, gd, ok, sc in zip([0, 0, 1, 1, 2, 3, 3, 4, 4], guidance, passed, score, strict=True):
        state.decide(g, 0, gd, True, (True, ok, sc))
    state.end_round(r)
    return state


def test_groups_close_by_the_rule():
    rule = SearchRule("adaptive", m_seeds=4, hopeless_after=2, hopeless_below=3.0)
    guidance = [2.5] * 9
    passed = [False, False, False, False, True, False, False, False, False]
    # group 0: both low; 1: one high; 2: passed; 3: a judge error (no score); 4: 0s
    score = [2.0, 2.9, 2.0, 3.5, 4.8, np.nan, 1.0, 0.0, 0.0]
    groups = _judged(rule, guidance, passed, score, 1)  # the rounds of seeds 0-1
    assert groups.state.tolist() == [HOPELESS, OPEN, PASSED, OPEN, HOPELESS, OPEN]
    assert _judged(rule, guidance, passed, score, 3).counts() == {
        "open": 0,
        "passed": 1,
        "hopeless": 2,
        "exhausted": 3,
    }
    grid = _judged(SearchRule("grid", m_seeds=4), guidance, passed, score, 0)
    assert grid.counts()["hopeless"] == 0
    assert rule.rounds() == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert SearchRule("adaptive", m_seeds=5, first_seeds=2, round_seeds=2).rounds() == [
        (0, 2),
        (2, 4),
        (4, 5),
    ]
    mixed = [2.5] * 5 + [3.5] * 4
    for order in ((2.5, 3.5), (3.5, 2.5)):
        best = SearchRule("adaptive", m_seeds=4, guidance="best", guidances=order)
        assert _judged(best, mixed, passed, score, 0).guidance == 2.5


def test_round_jobs_are_the_grid_jobs_and_a_cap_draws_uniformly_from_open_work():
    full = _plan(600)
    jobs = {r["candidate_id"]: r for t in full for r in t.to_pylist()}
    rng = np.random.default_rng(1)
    open_groups = rng.random(full.groups) < 0.5
    part = full.part((1, 3), open_groups)
    rows = [r for t in part for r in t.to_pylist()]
    assert len(rows) == len(part) == 2 * int(open_groups.sum())
    assert all(jobs[r["candidate_id"]] == r for r in rows)  # same id, seed, steps, guidance
    j = np.array([int(r["instruction_id"].rsplit("-i", 1)[1]) for r in rows])
    gi = full.group_index(pa.array([r["source_id"] for r in rows]), j)
    assert open_groups[gi].all()
    assert {int(r["candidate_id"].rsplit("-e", 1)[1]) for r in rows} == {1, 2}
    # a cap keeps the smallest priorities: the grid's order, restricted to the part
    capped = [
        c
        for t in full.part((1, 3), open_groups, 1500)
        for c in t.column("candidate_id").to_pylist()
    ]
    assert capped == [r["candidate_id"] for r in rows][:1500]
    # ... which is uniform over the open groups and the round's seeds
    picked = Counter(int(gi[k]) for k in range(1500))
    per_open = [picked.get(int(g), 0) for g in np.flatnonzero(open_groups)]
    bins = np.add.reduceat(per_open, np.arange(0, len(per_open), len(per_open) // 20))[:20]
    assert chisquare(bins).pvalue > 0.001
    seeds = Counter(c.rsplit("-e", 1)[1] for c in capped)
    assert chisquare(list(seeds.values())).pvalue > 0.001
    guided = np.full(full.groups, np.nan)
    guided[open_groups] = 9.0
    assert {
        r["guidance"] for t in full.part((1, 3), open_groups, 0, guided) for r in t.to_pylist()
    } == {9.0}


def test_group_jobs_are_the_jobs_of_a_part_for_those_groups():
    full = _plan(300)
    rng = np.random.default_rng(3)
    chosen = np.flatnonzero(rng.random(full.groups) < 0.3)
    mask = np.zeros(full.groups, dtype=bool)
    mask[chosen] = True
    for seeds in ((0, 1), (1, 3)):
        part = pa.concat_tables(list(full.part(seeds, mask)))
        direct = full.group_jobs(chosen, seeds)
        assert direct.to_pylist() == part.to_pylist()  # same jobs, same priority order
    guided = full.group_jobs(chosen[:5], (2, 3), 7.0)
    assert set(guided.column("guidance").to_pylist()) == {7.0} and guided.num_rows == 5
    assert full.group_jobs(chosen[:0], (0, 1)).num_rows == 0


def test_the_streamed_search_makes_the_rows_of_the_round_by_round_one(gated, tmp_path):
    """One chain (each group's next round as soon as it is judged) and one chain per
    round decide from the same verdicts: the same jobs, candidates and verdicts."""
    params = {
        "SEARCH": "adaptive",
        "SEARCH_GUIDANCE": "best",
        "SEARCH_HOPELESS_AFTER": 2,
        "SEARCH_HOPELESS_BELOW": 3.0,
    }
    streamed = _mine(gated, tmp_path / "streamed", **params)
    by_round = tmp_path / "by-round"
    pipe = _mine(gated, by_round, by_round=True, **params)
    for table in TABLES:
        assert _rows(tmp_path / "streamed", table) == _rows(by_round, table), table
    one, other = streamed.mining(), pipe.mining()
    assert one["rounds"] == other["rounds"] and one["groups_by_state"] == other["groups_by_state"]
    assert one["rounds"][1]["guidance"] in (2.5, 3.5)
    assert len(one["rounds"]) > 1


def test_a_cap_stops_the_loop_with_the_open_work_drawn(gated, tmp_path):
    pipe = _mine(gated, tmp_path / "capped", SEARCH="adaptive", MAX_EDIT_JOBS=20)
    mining = pipe.mining()
    assert mining["jobs"] == 20 == RunStore(tmp_path / "capped").tables.count("candidates")
    assert mining["stopped_by"] in ("cap", "done")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, json
    from nhr.pipeline import Pipeline
    from nhr.store.shards import TableStore

    run_dir, at, params = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    calls = [0]
    put = TableStore._put_entry

    def killing(self, *args):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return put(self, *args)

    if __name__ == "__main__":
        TableStore._put_entry = killing
        Pipeline.open(run_dir, params, progress=False).mine()
    """
)


KILL_PARAMS = {**SMALL, "SEARCH": "adaptive", "SEARCH_GUIDANCE": "best", "WORKERS": 1}


@pytest.fixture(scope="module")
def clean(gated, tmp_path_factory) -> Path:
    """The uninterrupted adaptive run the killed ones must reproduce."""
    run = tmp_path_factory.mktemp("mining") / "clean"
    _mine(gated, run, **{k: v for k, v in KILL_PARAMS.items() if k not in SMALL})
    return run


@pytest.mark.parametrize("at", [3, 12])
def test_sigkill_mid_loop_then_rerun_gives_the_uninterrupted_tables(gated, clean, tmp_path, at):
    params = KILL_PARAMS
    script = tmp_path / "mine.py"
    script.write_text(KILL_SCRIPT)
    killed = tmp_path / "killed"
    shutil.copytree(gated, killed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(script), str(killed)]
    proc = subprocess.run(
        [*args, str(at), json.dumps(params)], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(_rows(killed, "candidates")) < len(_rows(clean, "candidates")) or len(
        _rows(killed, "validator")
    ) < len(_rows(clean, "validator"))
    again = subprocess.run(
        [*args, "0", json.dumps(params)], env=env, capture_output=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-2000:]
    for table in TABLES:
        assert _rows(killed, table) == _rows(clean, table), table
    rounds = RunStore(killed).read_stats("mining")["rounds"]
    assert rounds == RunStore(clean).read_stats("mining")["rounds"]


@pytest.mark.parametrize("seed", range(6))
def test_the_guidance_is_fixed_early_only_when_the_rest_cannot_change_it(seed):
    """The feed fixes the later rounds' guidance before the last calibration verdict
    only where no outcome of the rest could change the choice: it always equals the
    choice made from every verdict."""
    plan = _plan(30)
    rule = SearchRule(
        search="adaptive", m_seeds=plan.m_seeds, guidance="best", guidances=plan.guidances
    )
    no_verdicts = Decisions(pa.array([], pa.string()), np.zeros(0, bool), np.zeros(0))
    feed = SeedFeed(plan, rule, [], no_verdicts)
    first = next(iter(feed))  # the first round, in one chunk
    rng = np.random.default_rng(seed)
    rate = {2.5: rng.uniform(0.1, 0.5), 3.5: rng.uniform(0.1, 0.5)}
    guidance = first.column("guidance").to_pylist()
    outcomes = [bool(rng.random() < rate[g]) for g in guidance]
    fixed_at = None
    for k, (cid, ok) in enumerate(
        zip(first.column("candidate_id").to_pylist(), outcomes, strict=True)
    ):
        feed._decide(cid, (True, ok, 5.0 if ok else 1.0))
        if feed.guidance is not None and fixed_at is None:
            fixed_at = k
    tried = [guidance.count(g) for g in rule.guidances]
    passed = [
        sum(ok for g2, ok in zip(guidance, outcomes, strict=True) if g2 == g)
        for g in rule.guidances
    ]
    assert feed.guidance == smoothed_best(rule.guidances, tried, passed)
    assert fixed_at is not None
    if abs(rate[2.5] - rate[3.5]) > 0.25:
        assert fixed_at < len(outcomes) - 1  # a clear winner is known before the end


def test_the_posterior_stop_closes_the_same_groups_streamed_by_round_and_resumed(gated, tmp_path):
    """The posterior stop decides from the group's own verdicts and the calibration
    jobs' rates only: one chain, one chain per round and a killed-then-rerun chain make
    the same rows, and it closes groups the pass rule leaves open."""
    params = {
        **KILL_PARAMS,
        "SEARCH_HOPELESS_AFTER": 0,
        "SEARCH_STOP_BELOW": 0.9,
        "SEARCH_STOP_RECALL": 0.9,
    }
    extra = {k: v for k, v in params.items() if k not in SMALL}
    streamed = _mine(gated, tmp_path / "streamed", **extra)
    mining = streamed.mining()
    assert mining["groups_by_state"]["hopeless"] > 0
    assert mining["posterior_stop"]["calibration_jobs"] == mining["rounds"][0]["jobs"]
    by_round = tmp_path / "by-round"
    pipe = _mine(gated, by_round, by_round=True, **extra)
    killed = tmp_path / "killed"
    shutil.copytree(gated, killed)
    script = tmp_path / "mine.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for at, code in ((12, -signal.SIGKILL), (0, 0)):
        proc = subprocess.run(
            [sys.executable, str(script), str(killed), str(at), json.dumps(params)],
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == code, proc.stderr[-2000:]
    for table in TABLES:
        assert _rows(tmp_path / "streamed", table) == _rows(by_round, table), table
        assert _rows(tmp_path / "streamed", table) == _rows(killed, table), table
    assert pipe.mining()["groups_by_state"] == mining["groups_by_state"]
    assert RunStore(killed).read_stats("mining")["rounds"] == mining["rounds"]
