"""Resolution buckets, step levels and the editor's call batcher."""

import math
import pickle
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from nhr.config import PipelineConfig
from nhr.errors import ConfigError
from nhr.records import EditJob, from_table
from nhr.resolutions import (
    KONTEXT_RESOLUTIONS,
    PAPER_RESOLUTIONS,
    fit_long_side,
    nearest,
    paper_resolutions,
    resolution_set,
)
from nhr.stages.edits import (
    EditCallBatcher,
    EditStage,
    call_batcher,
    call_key,
    edit_call_batches,
    edit_step_levels,
    plan_edit_jobs,
)
from nhr.stages.sources import SourceStage


def test_paper_resolutions_are_26_sizes_of_about_1mp_from_640x1600_to_1600x640():
    assert paper_resolutions() == PAPER_RESOLUTIONS
    assert len(set(PAPER_RESOLUTIONS)) == 26
    assert (PAPER_RESOLUTIONS[0], PAPER_RESOLUTIONS[-1]) == ((640, 1600), (1600, 640))
    for w, h in PAPER_RESOLUTIONS:
        assert w % 32 == 0 and h % 32 == 0
        assert 0.98e6 <= w * h <= 1.05e6
        assert 1 / 2.5 - 1e-9 <= w / h <= 2.5 + 1e-9
        assert (h, w) in PAPER_RESOLUTIONS  # portrait and landscape alike
    aspects = [math.log(w / h) for w, h in PAPER_RESOLUTIONS]
    assert aspects == sorted(aspects)
    assert len(KONTEXT_RESOLUTIONS) == 17 and (1024, 1024) in KONTEXT_RESOLUTIONS
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in KONTEXT_RESOLUTIONS)
    assert resolution_set("free") is None and resolution_set("kontext") == KONTEXT_RESOLUTIONS
    with pytest.raises(ValueError, match="unknown resolution set 'huge'"):
        resolution_set("huge")


def test_nearest_bucket_is_symmetric_in_log_aspect():
    assert nearest((3000, 1000), PAPER_RESOLUTIONS) == (1600, 640)
    assert nearest((1000, 3000), PAPER_RESOLUTIONS) == (640, 1600)
    assert nearest((500, 500), KONTEXT_RESOLUTIONS) == (1024, 1024)
    for w, h in PAPER_RESOLUTIONS:
        assert nearest((w * 3, h * 3), PAPER_RESOLUTIONS) == (w, h)
        assert nearest((h, w), PAPER_RESOLUTIONS) == (h, w)


def test_buckets_fit_the_long_side_range_and_keep_their_aspects():
    assert fit_long_side(PAPER_RESOLUTIONS, 860, 2200, 6.0, 16) == PAPER_RESOLUTIONS
    demo = fit_long_side(PAPER_RESOLUTIONS, 128, 256, 3.0, 8)
    assert 17 <= len(demo) <= 26 and len(set(demo)) == len(demo)
    for w, h in demo:
        assert w % 8 == 0 and h % 8 == 0 and 128 <= max(w, h) <= 256
        ratio = math.log(w / h)
        assert min(abs(ratio - math.log(a / b)) for a, b in PAPER_RESOLUTIONS) < 0.08
    narrow = fit_long_side(PAPER_RESOLUTIONS, 1200, 2200, 1.5, 32)
    assert all(max(w, h) / min(w, h) <= 1.5 and max(w, h) >= 1200 for w, h in narrow)
    tiny = fit_long_side(KONTEXT_RESOLUTIONS, 64, 96, 6.0, 16)
    assert all(64 <= max(w, h) <= 96 for w, h in tiny) and (64, 64) in tiny


class _FakeT2I:
    model_id = "fake-t2i"
    size_multiple = 8

    def generate(self, prompts, seeds, sizes, steps, guidance):
        return [Image.new("RGB", tuple(s)) for s in sizes]


def test_bucketed_sources_draw_every_size_from_the_fitted_list(tmp_path):
    from nhr.records import PromptRow

    stage = SourceStage(_FakeT2I(), None, 10, (128, 256), 3.0, 4, 0.0, 0, PAPER_RESOLUTIONS)
    allowed = set(fit_long_side(PAPER_RESOLUTIONS, 128, 256, 3.0, 8))
    prompts = [PromptRow(f"p{i}", 0, "x", "flat", "t", (), (), "w", "1") for i in range(40)]
    sizes = Counter(size for p in prompts for *_, size in stage.plan(p))
    assert set(sizes) <= allowed and len(sizes) >= 0.8 * len(allowed)
    free = SourceStage(_FakeT2I(), None, 10, (128, 256), 3.0, 4, 0.0, 0)
    free_sizes = {size for p in prompts for *_, size in free.plan(p)}
    assert len(free_sizes) > 3 * len(sizes)  # free sizes rarely repeat
    assert "resolutions" in stage.own_settings() and "resolutions" not in free.own_settings()


def test_step_levels_are_evenly_spaced_and_zero_keeps_every_integer():
    assert edit_step_levels(18, 28).tolist() == list(range(18, 29))
    assert edit_step_levels(18, 28, 3).tolist() == [18, 23, 28]
    assert edit_step_levels(18, 28, 2).tolist() == [18, 28]
    assert edit_step_levels(18, 28, 1).tolist() == [23]
    assert edit_step_levels(18, 28, 50).tolist() == list(range(18, 29))
    assert edit_step_levels(4, 4, 3).tolist() == [4]


def _grid(n_sources: int, sizes: list[tuple[int, int]]) -> tuple[pa.Table, pa.Table]:
    """Sources of the given sizes (cycled), 4 per prompt, 4 instructions a prompt."""
    n_prompts = (n_sources + 3) // 4
    sources = pa.table(
        {
            "source_id": [f"s{i:05d}" for i in range(n_sources)],
            "prompt_id": [f"p{i // 4:05d}" for i in range(n_sources)],
            "style": ["flat"] * n_sources,
            "image": [f"blobs/{i}.png" for i in range(n_sources)],
            "width": [sizes[i % len(sizes)][0] for i in range(n_sources)],
            "height": [sizes[i % len(sizes)][1] for i in range(n_sources)],
        }
    )
    prompts = pa.table(
        {
            "prompt_id": [f"p{i:05d}" for i in range(n_prompts)],
            "instructions": [[f"edit {j}" for j in range(4)] for _ in range(n_prompts)],
            "edit_types": [["recolor"] * 4 for _ in range(n_prompts)],
        }
    )
    return sources, prompts


def _jobs(n_sources: int, sizes, levels: int, guidances=(2.5,), m: int = 4) -> list[EditJob]:
    sources, prompts = _grid(n_sources, sizes)
    plan = plan_edit_jobs(sources, prompts, m, (18, 28), guidances, 3, steps_levels=levels)
    return [job for table in plan for job in from_table(table, EditJob)]


def test_the_plan_draws_steps_from_the_levels_only():
    coarse = _jobs(60, [(64, 48)], levels=3)
    assert Counter(j.steps for j in coarse).keys() == {18, 23, 28}
    every = _jobs(60, [(64, 48)], levels=0)
    same = _jobs(60, [(64, 48)], levels=11)  # as many levels as integers: the same draws
    assert [j.steps for j in every] == [j.steps for j in same]
    assert len({j.steps for j in every}) == 11
    assert [j.candidate_id for j in coarse] == [j.candidate_id for j in every]


def _check_batches(jobs: list[EditJob], batches: list[list[EditJob]], max_batch: int) -> None:
    ids = [j.candidate_id for b in batches for j in b]
    assert sorted(ids) == sorted(j.candidate_id for j in jobs)  # each job exactly once
    assert len(ids) == len(set(ids))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        assert len({call_key(j) for j in b}) == 1


@pytest.mark.parametrize(("window", "max_batch"), [(1, 4), (5, 8), (64, 8), (10_000, 3)])
def test_every_job_comes_out_once_in_calls_of_one_key(window, max_batch):
    sizes = fit_long_side(PAPER_RESOLUTIONS, 128, 256, 3.0, 8)[:6]
    jobs = _jobs(80, list(sizes), levels=2, guidances=(2.5, 3.5))
    batches = list(edit_call_batches(iter(jobs), max_batch, window))
    _check_batches(jobs, batches, max_batch)
    if window == 1:
        assert all(len(b) == 1 for b in batches)
    keys = {call_key(j) for j in jobs}
    if window >= len(keys) * (max_batch - 1) + 1:
        partial = [b for b in batches if len(b) < max_batch]
        assert len(partial) <= len(keys)  # only the flush at the end is partial


def test_the_window_bounds_how_many_jobs_are_held():
    jobs = _jobs(40, [(64, 48), (48, 64), (64, 64)], levels=3, guidances=(2.5, 3.5))
    taken = 0

    def stream():
        nonlocal taken
        for job in jobs:
            taken += 1
            yield job

    emitted = 0
    for batch in edit_call_batches(stream(), 8, window=10):
        emitted += len(batch)
        assert taken - emitted < 10  # never more than the window held
    assert emitted == len(jobs)


def test_a_full_key_goes_at_once_and_the_fullest_partial_when_the_window_fills():
    def job(i: int, w: int) -> EditJob:
        return EditJob(f"c{i}", "s", "p", "i", "x", "t", "flat", "b", w, 32, i, 2, 2.5)

    stream = [job(0, 16), job(1, 32), job(2, 16), job(3, 48), job(4, 16), job(5, 32)]
    got = [[j.candidate_id for j in b] for b in edit_call_batches(stream, 3, window=5)]
    # c4 fills key 16 (3 jobs); c5 leaves 3 held of a window of 5; then the flush
    assert got == [["c0", "c2", "c4"], ["c1", "c5"], ["c3"]]
    got = [[j.candidate_id for j in b] for b in edit_call_batches(stream, 8, window=4)]
    # window full at c3: the fullest group (16: c0, c2) goes; then the rest at the end
    # then c5 fills the window again: key 32 (c1, c5) goes; the flush, oldest key first
    assert got == [["c0", "c2"], ["c1", "c5"], ["c3"], ["c4"]]


def test_buckets_key_photo_sizes_by_their_nearest_bucket():
    def job(i: int, w: int, h: int) -> EditJob:
        return EditJob(f"c{i}", "s", "p", "i", "x", "t", "flat", "b", w, h, i, 2, 2.5)

    photos = [job(0, 1000, 1010), job(1, 640, 640), job(2, 1500, 600), job(3, 333, 330)]
    batches = list(edit_call_batches(photos, 8, 100, KONTEXT_RESOLUTIONS))
    assert sorted(len(b) for b in batches) == [1, 3]  # three near-squares share a call
    batcher = call_batcher(type("E", (), {"work_buckets": KONTEXT_RESOLUTIONS})(), 100)
    assert [len(b) for b in batcher(photos, 8)] == [len(b) for b in batches]


def test_realistic_stream_fills_calls_and_batchers_pickle():
    sizes = fit_long_side(PAPER_RESOLUTIONS, 128, 256, 3.0, 8)
    jobs = _jobs(400, list(sizes), levels=3)
    keys = len({call_key(j) for j in jobs})
    batcher = pickle.loads(pickle.dumps(EditCallBatcher(window=keys * 8)))
    batches = list(batcher(jobs, 8))
    _check_batches(jobs, batches, 8)
    assert len(jobs) / len(batches) >= 0.9 * 8
    assert pickle.loads(pickle.dumps(edit_call_batches)) is edit_call_batches
    naive = [jobs[i : i + 8] for i in range(0, len(jobs), 8)]  # fixed slices, mixed keys
    calls = sum(len({call_key(j) for j in b}) for b in naive)
    assert len(jobs) / calls < 2.0


class _RecordingEditor:
    model_id = "recording-editor"

    def __init__(self):
        self.calls = []

    def edit(self, images, instructions, seeds, steps, guidance):
        self.calls.append((len(images), tuple(steps), guidance))
        return [im.copy() for im in images]

    def usage(self):
        return {"calls": float(len(self.calls))}


class _Blobs:
    def __init__(self):
        self.images = {}

    def get(self, key):
        w, h = (int(x) for x in key.split("x"))
        return Image.new("RGB", (w, h))

    view = get  # a shared, read-only image in the real store; a new one here

    def put(self, image):
        key = f"out/{len(self.images)}"
        self.images[key] = image
        return key


def test_edit_stage_makes_one_call_per_key_and_reports_calls_and_images():
    def job(i: int, w: int, steps: int, g: float) -> EditJob:
        return EditJob(f"c{i}", "s", "p", "i", "x", "t", "flat", f"{w}x32", w, 32, i, steps, g)

    editor = _RecordingEditor()
    stage = EditStage(editor, _Blobs())
    assert stage.max_batch is None
    rows = [job(0, 32, 2, 2.5), job(1, 48, 2, 2.5), job(2, 32, 2, 2.5), job(3, 32, 3, 2.5)]
    rows += [job(4, 32, 2, 3.5)]
    out = stage.process_batch(rows)
    assert [c.candidate_id for c in out] == [r.candidate_id for r in rows]
    assert sorted(editor.calls) == sorted(
        [(2, (2, 2), 2.5), (1, (2,), 2.5), (1, (3,), 2.5), (1, (2,), 3.5)]
    )
    usage = stage.usage()
    assert (usage["editor_calls"], usage["editor_images"], usage["calls"]) == (4, 5, 4)
    clone = pickle.loads(pickle.dumps(stage))  # worker processes get a copy
    clone.process_batch(rows[:1])
    assert clone.usage()["editor_calls"] == 5 and stage.usage()["editor_calls"] == 4


def test_config_fields_validate():
    cfg = PipelineConfig.from_params(
        {"RESOLUTIONS": "paper", "EDIT_STEPS_LEVELS": 3, "EDIT_SCHEDULE_WINDOW": 64}
    )
    assert (cfg.sources.resolutions, cfg.edits.edit_steps_levels) == ("paper", 3)
    assert cfg.edits.edit_schedule_window == 64
    with pytest.raises(ConfigError, match="RESOLUTIONS"):
        PipelineConfig.from_params({"RESOLUTIONS": "sdxl"})
    assert np.isclose(PipelineConfig().edits.edit_schedule_window, 512)
