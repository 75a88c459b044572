"""Diffusers backends on tiny random models (64-ish px, 2 steps), loaded from local
folders written by `nhr tiny-models` through the real `from_pretrained` path."""

import dataclasses
import math

import numpy as np
import pytest
from PIL import Image

from nhr.backends.diffusers_kontext import KontextEditor
from nhr.backends.diffusers_pix2pix import Pix2PixEditor
from nhr.backends.diffusers_runtime import DiffusersOptions, Residency, scaled_size
from nhr.backends.diffusers_t2i import DiffusersTextToImage
from nhr.pipeline import Pipeline
from nhr.stages.sources import sample_size
from tests.conftest import nhr_cli

CPU = DiffusersOptions(device="cpu", dtype="float32", max_batch=8)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny models, written once by the CLI command a user runs."""
    folder = tmp_path_factory.mktemp("tiny-models")
    proc = nhr_cli("tiny-models", str(folder))
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("flux-t2i", "flux-kontext", "instruct-pix2pix"):
        assert (folder / name / "model_index.json").is_file()
        assert f"{name}: {folder / name}" in proc.stdout
    return folder


@pytest.fixture(scope="module")
def t2i(tiny_dir):
    return DiffusersTextToImage(str(tiny_dir / "flux-t2i"), CPU)


@pytest.fixture(scope="module")
def kontext(tiny_dir):
    return KontextEditor(str(tiny_dir / "flux-kontext"), CPU, max_area=64 * 64)


@pytest.fixture(scope="module")
def pix2pix(tiny_dir):
    return Pix2PixEditor(str(tiny_dir / "instruct-pix2pix"), CPU, max_area=64 * 64)


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_t2i_loads_local_folder_and_snaps_to_its_multiple(t2i):
    assert t2i.size_multiple == 16  # FLUX: VAE factor 8 × 2 (packed latents)
    assert type(t2i.holder.pipe).__name__ == "FluxPipeline"
    assert t2i.model_id.endswith("flux-t2i")


def test_t2i_seeds_deterministic_and_batched_equals_one_call_per_seed(t2i):
    prompts, seeds, sizes = ["a red cube"] * 3, [11, 12, 13], [(64, 32)] * 3
    batched = t2i.generate(prompts, seeds, sizes, 2, 0.0)
    calls = t2i.usage()["calls"]
    again = t2i.generate(prompts, seeds, sizes, 2, 0.0)
    assert t2i.usage()["calls"] == calls + 1  # one batched call for three seeds
    singles = [
        t2i.generate([p], [s], [z], 2, 0.0)[0]
        for p, s, z in zip(prompts, seeds, sizes, strict=True)
    ]
    for a, b, c in zip(batched, again, singles, strict=True):
        assert a.size == (64, 32)
        assert np.array_equal(arr(a), arr(b))
        assert np.abs(arr(a) - arr(c)).max() <= 1  # batching changes no image
    assert np.abs(arr(batched[0]) - arr(batched[1])).mean() > 1  # seeds differ


def test_t2i_mixed_sizes_come_back_in_order(t2i):
    sizes = [(96, 16), (32, 64), (96, 16)]
    out = t2i.generate(["a", "b", "c"], [1, 2, 3], sizes, 2, 0.0)
    assert [o.size for o in out] == sizes


def test_resolution_sampler_stays_in_the_papers_ranges():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h = sample_size(rng, 860, 2200, 6.0, 16)
        assert w % 16 == 0 and h % 16 == 0
        assert 860 <= max(w, h) <= 2200
        assert 1 / 6 <= w / h <= 6


@pytest.mark.parametrize("size", [(67, 45), (97, 16), (16, 96), (33, 201)])
@pytest.mark.parametrize("name", ["kontext", "pix2pix"])
def test_edit_returns_the_source_size(request, name, size):
    editor = request.getfixturevalue(name)
    source = Image.effect_noise(size, 40).convert("RGB")
    out = editor.edit([source, source], ["make it red", "add a hat"], [1, 2], [2, 3], 2.5)
    assert [o.size for o in out] == [size, size]
    assert all(o.mode == "RGB" for o in out)


@pytest.mark.parametrize("name", ["kontext", "pix2pix"])
def test_edit_batched_seeds_equal_one_call_per_seed(request, name):
    editor = request.getfixturevalue(name)
    src = Image.effect_noise((64, 48), 60).convert("RGB")
    seeds = [5, 6, 7]
    calls = editor.usage()["calls"]
    batched = editor.edit([src] * 3, ["make it blue"] * 3, seeds, [2] * 3, 2.5)
    assert editor.usage()["calls"] == calls + 1  # M seeds of one (image, instruction, steps)
    singles = [editor.edit([src], ["make it blue"], [s], [2], 2.5)[0] for s in seeds]
    again = editor.edit([src] * 3, ["make it blue"] * 3, seeds, [2] * 3, 2.5)
    for a, b, c in zip(batched, singles, again, strict=True):
        assert np.abs(arr(a) - arr(b)).max() <= 1
        assert np.array_equal(arr(a), arr(c))
    assert np.abs(arr(batched[0]) - arr(batched[1])).mean() > 1


def test_edit_groups_by_steps_and_keeps_order(kontext):
    src = Image.effect_noise((64, 64), 50).convert("RGB")
    steps = [2, 3, 2, 3]
    calls = kontext.usage()["calls"]
    out = kontext.edit([src] * 4, ["x"] * 4, [1, 2, 3, 4], steps, 2.5)
    assert kontext.usage()["calls"] == calls + 2  # one call per steps value
    ref = kontext.edit([src], ["x"], [2], [3], 2.5)[0]
    assert np.abs(arr(out[1]) - arr(ref)).max() <= 1
    assert kontext.usage()["device_seconds"] > 0


def test_kontext_work_sizes_follow_preferred_resolutions_or_aspect(kontext):
    assert kontext.work_size((1024, 1024)) == (64, 64)
    w, h = kontext.work_size((600, 100))  # 6:1 → the widest Kontext resolution, 1568×672
    assert w > h and w % 16 == 0 and abs(w / h - 1568 / 672) < 0.5
    free = dataclasses.replace(CPU)
    assert scaled_size((600, 100), 64 * 64, 16) == (160, 32)
    editor = KontextEditor("x", free, max_area=64 * 64, preferred_resolutions=False)
    editor.holder.pipe = kontext.holder.pipe  # reuse the loaded pipeline
    assert editor.work_size((600, 100)) == (160, 32)
    assert math.isclose(160 / 32, 5.0)


def test_residency_parks_the_other_model():
    class Fake:
        parked = 0

        def park(self):
            self.parked += 1

    res, a, b = Residency(), Fake(), Fake()
    res.acquire(a)
    res.acquire(a)
    assert a.parked == 0
    res.acquire(b)
    assert (a.parked, b.parked, res.active) == (1, 0, b)


def _chain_params(tiny_dir, **extra):
    return {
        "PROMPTER": "plumbing",
        "INVERTER": "plumbing",
        "T2I": "diffusers",
        "T2I_MODEL": str(tiny_dir / "flux-t2i"),
        "EDITOR": "instruct-pix2pix",
        "EDITOR_MODEL": str(tiny_dir / "instruct-pix2pix"),
        "GATE_JUDGE": "plumbing-accept-all",
        "PREFILTER_JUDGE": "plumbing-accept-all",
        "VALIDATOR": "plumbing-accept-all",
        "DIFFUSERS_DEVICE": "cpu",
        "N_PROMPTS": 2,
        "K_INSTRUCTIONS": 2,
        "N_SOURCE_SEEDS": 2,
        "LONG_SIDE_MIN": 48,
        "LONG_SIDE_MAX": 64,
        "ASPECT_MAX": 6.0,
        "T2I_STEPS": 2,
        "M_EDIT_SEEDS": 3,
        "EDIT_STEPS_MIN": 2,
        "EDIT_STEPS_MAX": 2,
        "EDIT_MAX_AREA": 4096,
        "BATCH_SIZE": 4,
        **extra,
    }


def test_scheduler_cap_budget_and_resume_with_a_real_editor(tiny_dir, tmp_path):
    params = _chain_params(tiny_dir, MAX_EDIT_JOBS=10, EDIT_BUDGET_SECONDS=1e-6)
    pipe = Pipeline.open(tmp_path / "run", params, progress=False)
    pipe.prompts()
    pipe.sources()
    sources = pipe.rows("sources")
    assert len(sources) == 4 and all(s.model_id.endswith("flux-t2i") for s in sources)
    assert len({s.seed for s in sources}) == 4
    pipe.gate()
    # the budget is spent by the first call: one call's jobs run (the call batcher groups
    # jobs of one size, step count and guidance), the rest of the 10 are left
    first = pipe.edits()
    assert first.stats["grid_jobs"] == 10  # MAX_EDIT_JOBS caps the 2·2·2·3 = 24-job grid
    ran = first.stats["rows_out"]
    assert 1 <= ran < 10 and first.stats["not_scheduled"] == 10 - ran
    assert first.stats["usage"]["images"] == ran and first.stats["usage"]["device_seconds"] > 0
    first_rows = pipe.rows("candidates")
    assert all(c.seconds > 0 for c in first_rows)
    # a rerun with the same budget runs nothing more (spent seconds are recorded)
    again = pipe.edits()
    assert (again.stats["rows_out"], again.stats["processed_rows"]) == (ran, 0)
    # a larger budget resumes: the remaining jobs run, the first ones are not redone
    cfg = pipe.cfg.replace(edit_budget_seconds=0.0)
    resumed = Pipeline(tmp_path / "run", cfg, progress=False).edits()
    assert (resumed.stats["resumed_rows"], resumed.stats["processed_rows"]) == (ran, 10 - ran)
    assert resumed.stats["rows_out"] == 10 and resumed.stats["usage"]["images"] == 10
    old = {c.candidate_id: c.image for c in first_rows}
    resumed_rows = pipe.rows("candidates")
    assert all(c.image == old[c.candidate_id] for c in resumed_rows if c.candidate_id in old)
    assert all(
        c.width == s.width for c in resumed_rows for s in sources if s.source_id == c.source_id
    )


@pytest.mark.slow
def test_nhr_run_tiny_diffusers_config(tiny_dir, tmp_path):
    """The whole chain through papermill with the tiny models (about a minute)."""
    run = tmp_path / "run"
    proc = nhr_cli(
        "run",
        "configs/tiny-diffusers.yaml",
        "--run-dir",
        str(run),
        "--no-progress",
        "-p",
        "T2I_MODEL",
        str(tiny_dir / "flux-t2i"),
        "-p",
        "EDITOR_MODEL",
        str(tiny_dir / "flux-kontext"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "dataset" / "README.md").is_file()
    assert "triplets in" in proc.stdout and not proc.stdout.startswith("0 ")


def test_bucketed_photos_batch_into_one_call_and_equal_one_call_per_seed(kontext, tmp_path):
    """Sources of different sizes but one Kontext bucket edit in one pipeline call, through
    the edit stage and the call batcher, and each equals its own one-image call."""
    from nhr.records import EditJob
    from nhr.stages.edits import EditStage, call_batcher
    from nhr.store import BlobStore

    blobs = BlobStore(tmp_path)
    sizes = [(70, 68), (64, 64), (90, 93), (128, 40)]  # three near-squares, one wide
    keys = [blobs.put(Image.effect_noise(s, 50).convert("RGB")) for s in sizes]
    jobs = [
        EditJob(f"c{i}", "s", "p", "i", "add a hat", "add", "flat", k, *s, 20 + i, 2, 2.5)
        for i, (k, s) in enumerate(zip(keys, sizes, strict=True))
    ]
    stage = EditStage(kontext, blobs)
    assert stage.max_batch == 8 and stage.buckets == kontext.work_buckets
    batches = list(call_batcher(kontext)(jobs, stage.max_batch))
    assert sorted(len(b) for b in batches) == [1, 3]
    calls = kontext.usage()["calls"]
    before = stage.usage()
    out = [c for b in batches for c in stage.process_batch(b)]
    assert kontext.usage()["calls"] == calls + 2  # one pipeline call per bucket
    after = stage.usage()
    assert after["editor_calls"] - before["editor_calls"] == 2
    assert after["editor_images"] - before["editor_images"] == 4
    by_id = {c.candidate_id: blobs.get(c.image) for c in out}
    for job in jobs:
        single = kontext.edit(
            [blobs.get(job.source_image)], [job.instruction], [job.seed], [2], 2.5
        )
        assert by_id[job.candidate_id].size == (job.width, job.height)
        assert np.abs(arr(by_id[job.candidate_id]) - arr(single[0])).max() <= 1
