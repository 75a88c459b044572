"""Cost per triplet: the simulated-GPU synthetic editor, the fake Gemini server judging as
the synthetic world's judge, and the summary's and card's figures against what the
tables, the stats and the server recorded."""

import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import FAST, close_clients, use_fake

from nhr.backends.registry import build_backends
from nhr.backends.synthetic import SyntheticEditor, SyntheticJudge
from nhr.backends.synthetic.gpu import SimulatedGpuEditor
from nhr.config import PipelineConfig
from nhr.executors import DEVICE
from nhr.pipeline import Pipeline
from nhr.stages.export import card_body
from nhr.summary import cost_per_triplet, write_summary

GPU_SECONDS = 0.002
PARAMS = {
    "PREFILTER_JUDGE": "gemini",
    "VALIDATOR": "gemini",
    "N_PROMPTS": 3,
    "K_INSTRUCTIONS": 3,
    "N_SOURCE_SEEDS": 2,
    "LONG_SIDE_MIN": 64,
    "LONG_SIDE_MAX": 96,
    "M_EDIT_SEEDS": 3,
    "BATCH_SIZE": 8,
    "WORKERS": 2,
    "SYNTHETIC_GPU_SECONDS": GPU_SECONDS,
    **FAST,
    "API_TIMEOUT_SECONDS": 5.0,
}


def test_the_registry_builds_a_device_editor_only_with_gpu_seconds(tmp_path):
    plain = build_backends(PipelineConfig.from_params({}), tmp_path).editor
    gpu = build_backends(PipelineConfig.from_params({"SYNTHETIC_GPU_SECONDS": 0.5}), tmp_path)
    assert type(plain) is SyntheticEditor and plain.work == "cpu"
    assert isinstance(gpu.editor, SimulatedGpuEditor) and gpu.editor.work == DEVICE
    assert gpu.editor.seconds_per_image == 0.5 and gpu.editor.model_id == plain.model_id
    with pytest.raises(ValueError, match="seconds_per_image must be > 0"):
        SimulatedGpuEditor(gpu.editor.truth, 0.0)


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """A tiny run mined with the simulated GPU and both mining judges on the fake."""
    monkeypatch = pytest.MonkeyPatch()
    judge = SyntheticJudge()
    with FakeModelServer(judge=judge) as srv:
        use_fake(monkeypatch, srv)
        pipe = Pipeline.open(tmp_path_factory.mktemp("cost") / "run", PARAMS, progress=False)
        for step in ("prompts", "sources", "gate", "edits", "prefilter", "lowlevel"):
            getattr(pipe, step)()
        pipe.validate()
        pipe.select()
        close_clients(pipe.backends)
        requests = srv.requests("gemini")
    monkeypatch.undo()
    return pipe, judge, requests


def test_the_simulated_gpu_editor_makes_the_plain_editors_pixels(judged_run):
    pipe, _, _ = judged_run
    rows = pipe.rows("candidates")[:6]
    sources = [pipe.store.blobs.get(r.source_image) for r in rows]
    plain = SyntheticEditor(pipe.backends.editor.truth)
    for guidance in {r.guidance for r in rows}:
        mine = [i for i, r in enumerate(rows) if r.guidance == guidance]
        args = (
            [sources[i] for i in mine],
            [rows[i].instruction for i in mine],
            [rows[i].seed for i in mine],
            [rows[i].steps for i in mine],
            guidance,
        )
        again = plain.edit(*args)
        for i, image in zip(mine, again, strict=True):
            assert image.tobytes() == pipe.store.blobs.get(rows[i].image).tobytes()
    usage = pipe.store.read_stats("candidates")["usage"]
    assert usage["images"] == pipe.tables.count("candidates") > 0
    assert usage["device_seconds"] >= GPU_SECONDS * usage["images"]


def test_the_fake_judges_as_the_synthetic_judge_does(judged_run):
    pipe, judge, requests = judged_run
    cands = {c.candidate_id: c for c in pipe.rows("candidates")}
    verdicts = pipe.rows("validator")
    assert verdicts and any(v.passed for v in verdicts) and not all(v.passed for v in verdicts)
    for v in verdicts:
        c = cands[v.subject_id]
        [local] = judge.score(
            [pipe.store.blobs.get(c.source_image)], [pipe.store.blobs.get(c.image)], [c.instruction]
        )
        assert (v.adherence, v.aesthetic) == (local.adherence, local.aesthetic)
    # one request per verdict, but for repeats the run's request cache answered
    stats = pipe.store.all_stats()
    usage = [stats[name]["usage"] for name in ("prefilter", "validator")]
    assert len(requests) == sum(u["calls"] for u in usage)
    hits = sum(u.get("cache_hits", 0) for u in usage)
    assert len(requests) + hits == len(pipe.rows("prefilter")) + len(verdicts)


def test_cost_per_triplet_equals_what_the_tables_and_stats_record(judged_run):
    pipe, _, requests = judged_run
    stats = pipe.store.all_stats()
    mined = pipe.tables.count("mined")
    assert mined > 0
    summary = write_summary(pipe.tables, pipe.cfg, pipe.backends.truth)
    cost = summary["cost_per_triplet"]
    assert cost["triplets"] == mined
    assert cost["generations"] == pipe.tables.count("candidates")
    assert cost["generations_per_triplet"] == round(cost["generations"] / mined, 4)
    # remote judges: the API calls they made (no fault here; cache hits are no call)
    assert cost["judge_calls"]["prefilter"] == stats["prefilter"]["usage"]["calls"]
    assert cost["judge_calls"]["validator"] == stats["validator"]["usage"]["calls"]
    assert cost["judge_calls_per_triplet"] == round(len(requests) / mined, 4)
    # the local synthetic gate: one call per verdict row
    assert cost["judge_calls"]["gate"] == pipe.tables.count("plausibility") > 0
    device = stats["candidates"]["usage"]["device_seconds"]
    assert cost["editor_gpu_seconds"] == round(device, 3)
    assert cost["t2i_gpu_seconds"] is None  # the synthetic renderer reports no device time
    usd = stats["prefilter"]["usage"]["cost_usd"] + stats["validator"]["usage"]["cost_usd"]
    assert usd > 0 and cost["api_usd"] == round(usd, 6)
    assert cost["api_usd_per_triplet"] == round(usd / mined, 8)
    # the mining loop's record: the editor's seconds over the loop's wall time
    mining = pipe.store.read_stats("mining")
    assert mining["wall_seconds"] > 0
    assert cost["editor_busy_share"] == round(
        mining["editor_busy_seconds"] / mining["wall_seconds"], 4
    )
    assert summary["cost"]["calls"] == len(requests)  # the editor's calls are no API calls


def test_busy_share_comes_from_the_mining_stats_and_the_card_shows_the_cost(judged_run):
    pipe, _, _ = judged_run
    pipe.store.write_stats("mining", {"wall_seconds": 12.5, "editor_busy_seconds": 10.0})
    try:
        cost = cost_per_triplet(pipe.tables, pipe.store.all_stats())
    finally:
        (pipe.store.root / "stats" / "mining.json").unlink()
    assert cost["editor_busy_share"] == 0.8 and cost["mining_wall_seconds"] == 12.5
    body = card_body("x", {"mined": 1}, {"add": 1}, [], 0, 0, cost)
    assert "## Cost" in body and "Editor busy share of the mining wall time: 80.0%" in body
    row = next(line for line in body.splitlines() if line.startswith("| generations"))
    assert row == (
        f"| generations (edits made) | {cost['generations']:,} | "
        f"{cost['generations_per_triplet']:.4g} |"
    )
    assert "## Cost" not in card_body("x", {"mined": 1}, {"add": 1}, [], 0, 0, None)


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts/bench_mining.py"
    spec = importlib.util.spec_from_file_location("bench_mining", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_mining_checks_each_target_against_grid():
    bench = _bench_module()
    grid = {
        "accepted": 100,
        "generations_per_accepted": 8.0,
        "judge_calls_per_accepted": 10.0,
        "audit_precision": 0.98,
        "wall_seconds": 50.0,
        "editor_busy_seconds": 40.0,
        "mean_images_per_call": 8.0,
    }
    adaptive = {
        **grid,
        "accepted": 96,
        "generations_per_accepted": 3.0,
        "judge_calls_per_accepted": 6.0,
        "audit_precision": 0.975,
        "wall_seconds": 21.0,
        "editor_busy_seconds": 20.0,
        "mean_images_per_call": 15.0,
    }
    met = {t["measure"].split(" (")[0]: t["met"] for t in bench.targets(grid, adaptive, 16)}
    assert met == {
        "adaptive generations_per_accepted": True,
        "adaptive accepted": True,
        "adaptive audit_precision": True,
        "adaptive judge_calls_per_accepted": False,
        "grid wall_seconds": False,
        "adaptive wall_seconds": True,
        "grid mean_images_per_call": False,
        "adaptive mean_images_per_call": True,
    }
    assert bench.ratios(grid, adaptive)["accepted"] == 0.96
