"""The lazy edit plan: a seeded uniform order over the N×k×M grid, never built whole."""

import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import chisquare

from nhr import slices
from nhr.records import EditJob, Record, from_table
from nhr.runner import Runner
from nhr.stages.base import Stage
from nhr.stages.edits import plan_edit_jobs
from nhr.store import RunStore

K, M = 5, 5


def _grid(n_sources: int, k: int = K) -> tuple[pa.Table, pa.Table]:
    n_prompts = (n_sources + 3) // 4
    sources = pa.table(
        {
            "source_id": [f"s{i:05d}" for i in range(n_sources)],
            "prompt_id": [f"p{i // 4:05d}" for i in range(n_sources)],
            "style": ["flat"] * n_sources,
            "image": [f"blobs/{i}.png" for i in range(n_sources)],
            "width": [64] * n_sources,
            "height": [48] * n_sources,
        }
    )
    prompts = pa.table(
        {
            "prompt_id": [f"p{i:05d}" for i in range(n_prompts)],
            "instructions": [[f"edit {j} of {i}" for j in range(k)] for i in range(n_prompts)],
            "edit_types": [[f"type{j}" for j in range(k)] for i in range(n_prompts)],
        }
    )
    return sources, prompts


def _plan(n_sources: int, max_jobs: int = 0, seed: int = 7, **sizes: int) -> Any:
    sources, prompts = _grid(n_sources)
    plan = plan_edit_jobs(sources, prompts, M, (18, 28), (2.5, 3.5), seed, max_jobs)
    for name, value in sizes.items():
        setattr(plan, name, value)
    return plan


def _ids(plan: Any) -> list[str]:
    return [c for t in plan for c in t.column("candidate_id").to_pylist()]


def test_a_cap_is_a_uniform_sample_of_the_grid():
    plan = _plan(800, max_jobs=4000, band_jobs=1500, pass_jobs=3000, chunk_rows=700)
    jobs = pa.concat_tables(list(plan))
    assert jobs.num_rows == 4000 == len(plan) and plan.grid_size == 800 * K * M
    ids = jobs.column("candidate_id").to_pylist()
    parts = [c.rsplit("-", 2) for c in ids]
    by_instruction = Counter(p[1] for p in parts)
    by_seed = Counter(p[2] for p in parts)
    by_source_group = Counter(int(p[0][1:]) % 20 for p in parts)
    for counts, cells in ((by_instruction, K), (by_seed, M), (by_source_group, 20)):
        assert len(counts) == cells
        assert chisquare(list(counts.values())).pvalue > 0.001
    # each source keeps about 4000 / 800 = 5 jobs: the spread of a binomial, not a block
    per_source = Counter(p[0] for p in parts)
    assert np.var(list(per_source.values()) + [0] * (800 - len(per_source))) < 8


def test_the_plan_is_deterministic_and_a_cap_is_its_prefix():
    full = _ids(_plan(300, band_jobs=1000, pass_jobs=700))
    assert full == _ids(_plan(300))  # band and pass sizes change nothing
    assert len(full) == len(set(full)) == 300 * K * M
    capped = _ids(_plan(300, max_jobs=1234))
    assert capped == full[:1234]
    assert _ids(_plan(300, seed=8))[:50] != full[:50]


def test_jobs_carry_their_instruction_and_drawn_settings():
    jobs = from_table(pa.concat_tables(list(_plan(40, max_jobs=300))), EditJob)
    for job in jobs:
        source, inst, seed = job.candidate_id.rsplit("-", 2)
        j = int(inst[1:])
        assert job.source_id == source and 0 <= int(seed[1:]) < M
        assert job.instruction == f"edit {j} of {int(job.prompt_id[1:])}"
        assert job.instruction_id == f"{job.prompt_id}-i{j}" and job.edit_type == f"type{j}"
        assert 18 <= job.steps <= 28 and job.guidance in (2.5, 3.5) and 0 <= job.seed < 2**31
    assert len({j.steps for j in jobs}) > 5 and len({j.guidance for j in jobs}) == 2


def test_jobs_carry_their_source_s_columns_from_memory_and_from_the_spilled_images():
    sources, prompts = _grid(90)
    sources = sources.set_column(
        sources.schema.get_field_index("style"), "style", pa.array(["flat", "photo", "ink"] * 30)
    ).set_column(sources.schema.get_field_index("width"), "width", pa.array(range(90)))
    shuffled = sources.take(pa.array(np.random.default_rng(1).permutation(90)))
    by_id = {row["source_id"]: row for row in sources.to_pylist()}

    def check(plan: Any) -> None:
        jobs = pa.concat_tables(list(plan)).to_pylist()
        assert len(jobs) == 700 and len({j["source_id"] for j in jobs}) > 80
        for job in jobs:
            source = by_id[job["source_id"]]
            assert job["source_image"] == source["image"] and job["style"] == source["style"]
            assert (job["width"], job["height"]) == (source["width"], source["height"])
            assert job["prompt_id"] == source["prompt_id"]

    plan = plan_edit_jobs(shuffled, prompts, M, (18, 28), (2.5, 3.5), 3, max_jobs=700)
    assert plan.sources.column_names == ["source_id", "prompt_id", "style", "width", "height"]
    check(plan)
    # the images read back from many small batches of the spill file
    ids = plan.sources.column("source_id").to_pylist()
    images = pa.table({"image": [by_id[i]["image"] for i in ids]})
    plan.images = slices.SpilledRows(images, batch_rows=7)
    check(plan)


def test_chunks_and_passes_stay_bounded():
    plan = _plan(2000, chunk_rows=1000, pass_jobs=5000, band_jobs=8000)
    assert max(len(src) for src, _, _ in plan._passes()) <= 5000
    sizes = [t.num_rows for t in plan]
    assert max(sizes) <= 1000 and sum(sizes) == 2000 * K * M


def test_a_missing_prompt_is_named():
    sources, prompts = _grid(8)
    with pytest.raises(ValueError, match="'p00001'"):
        plan_edit_jobs(sources, prompts.slice(0, 1), M, (18, 28), (3.0,), 0)


class SlowEdit(Stage[EditJob, Record]):
    name = "edits"
    input_type = EditJob
    output_type = EditJob

    def __init__(self) -> None:
        self.seen: list[str] = []

    def settings(self) -> dict[str, Any]:
        return {}

    def process_batch(self, rows: list[EditJob]) -> list[EditJob]:
        time.sleep(0.03)
        self.seen += [r.candidate_id for r in rows]
        return rows


def test_a_budget_resumes_along_the_plan(tmp_path):
    order = _ids(_plan(60))
    runner = Runner(RunStore(tmp_path), batch_size=10, progress=False)
    first = SlowEdit()
    stats = runner.run(first, _plan(60, chunk_rows=64), budget_seconds=0.1).stats
    n = len(first.seen)
    assert 0 < n < 200 and first.seen == order[:n]  # the front of the plan, in order
    assert stats["not_scheduled"] == len(order) - n and stats["rows_in"] == len(order)
    again = SlowEdit()
    runner.run(again, _plan(60, chunk_rows=64), budget_seconds=0.1)
    assert again.seen == []  # the spent budget survives the resume
    more = SlowEdit()
    stats = runner.run(more, _plan(60, chunk_rows=64), budget_seconds=0.25).stats
    assert more.seen == order[n : n + len(more.seen)] and more.seen
    assert stats["resumed_rows"] == n
