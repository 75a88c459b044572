"""The null world: instant backends whose verdicts follow the paper's rates, by hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nhr.backends import null
from nhr.backends.base import PromptRequest
from nhr.backends.registry import PHOTO_ROLES, REGISTRY, build_backends
from nhr.config import PipelineConfig
from nhr.records import EditJob
from nhr.stages.edits import EditStage
from nhr.stages.filters import LowLevelStage
from nhr.store import BlobStore

SIZE = (32, 32)
N_PROMPTS = 600  # × 5 instructions: 3,000 (source, instruction) pairs


def world_subjects() -> tuple[null.NullWorld, list, list]:
    """A null world, its prompts, and one source image per (prompt, seed) for 6 seeds."""
    world = null.NullWorld()
    drafts = world.backend("prompter").write(
        [PromptRequest(f"p{i:06d}", i, 5) for i in range(N_PROMPTS)]
    )
    seeds = list(range(6 * N_PROMPTS))
    images = world.backend("t2i").generate(
        [drafts[s % N_PROMPTS].text for s in seeds], seeds, [SIZE] * len(seeds), 1, 0.0
    )
    return world, drafts, images


def test_gate_passes_44_percent_of_sources() -> None:
    world, drafts, images = world_subjects()
    prompts = [drafts[s % N_PROMPTS].text for s in range(len(images))]
    answers = world.judge.plausibility(images, prompts)
    rate = sum(a.answer for a in answers) / len(answers)
    assert abs(rate - null.GATE_RATE) < 0.03, rate
    assert all(a.error is None for a in answers)


def edited_subjects(world: null.NullWorld, drafts: list, images: list) -> tuple[list, list, list]:
    """(sources, edits, instructions): one edit per (prompt, instruction), 3,000 in all."""
    sources, texts = [], []
    for i, draft in enumerate(drafts):
        for j, instruction in enumerate(draft.instructions):
            sources.append(images[(i * 5 + j) % len(images)])
            texts.append(instruction.text)
    edits = world.backend("editor").edit(
        sources, texts, list(range(len(texts))), [1] * len(texts), 2.5
    )
    return sources, edits, texts


def test_prefilter_and_validator_rates() -> None:
    world, drafts, images = world_subjects()
    sources, edits, texts = edited_subjects(world, drafts, images)
    pre = world.judge.prefilter(sources, edits, texts)
    passed = [
        not a.unwanted_changes
        and a.aesthetic_ok
        and min(a.scores.adherence, a.scores.aesthetic) >= 3
        for a in pre
    ]
    assert abs(sum(passed) / len(passed) - null.PREFILTER_RATE) < 0.03
    keep = [i for i, ok in enumerate(passed) if ok]
    scores = world.judge.score(
        [sources[i] for i in keep], [edits[i] for i in keep], [texts[i] for i in keep]
    )
    rate = sum(min(s.adherence, s.aesthetic) >= 4.7 for s in scores) / len(scores)
    assert abs(rate - null.VALIDATOR_RATE) < 0.05, rate
    assert all(1 <= x <= 5 for s in scores for x in (s.adherence, s.aesthetic))


def test_backward_and_composed_texts_pass_at_their_rates() -> None:
    world, drafts, images = world_subjects()
    sources, edits, texts = edited_subjects(world, drafts, images)
    inverses = [a.text for a in world.backend("inverter").invert(texts, texts)]
    composed = [a.text for a in world.backend("inverter").compose(inverses, texts, texts)]
    for kind, rate in ((inverses, null.BACKWARD_RATE), (composed, null.COMPOSED_RATE)):
        scores = world.judge.score(edits, sources, kind)
        share = sum(min(s.adherence, s.aesthetic) >= 4.7 for s in scores) / len(scores)
        assert abs(share - rate) < 0.03, (share, rate)


def test_null_world_is_deterministic() -> None:
    a, drafts_a, images_a = world_subjects()
    b, drafts_b, images_b = world_subjects()
    assert drafts_a == drafts_b
    assert [i.tobytes() for i in images_a[:200]] == [i.tobytes() for i in images_b[:200]]
    sa, ea, ta = edited_subjects(a, drafts_a, images_a)
    sb, eb, tb = edited_subjects(b, drafts_b, images_b)
    assert [e.tobytes() for e in ea[:300]] == [e.tobytes() for e in eb[:300]]
    assert a.judge.score(sa[:300], ea[:300], ta[:300]) == b.judge.score(
        sb[:300], eb[:300], tb[:300]
    )
    # a handful of fixed pictures, so the blob store dedupes them
    assert len({i.tobytes() for i in images_a}) <= null.SOURCE_VARIANTS


def test_lowlevel_check_passes_97_percent_of_null_edits(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    world = null.NullWorld()
    sources = [blobs.put(null.source_image(v, SIZE)) for v in range(null.SOURCE_VARIANTS)]
    jobs = [
        EditJob(
            candidate_id=f"c{i}",
            source_id=f"s{i % 16}",
            prompt_id="p0",
            instruction_id=f"p0-i{i % 5}",
            instruction=f"null edit {i % 5} of p{i // 5:06d}",
            edit_type="add",
            style="photo",
            source_image=sources[i % len(sources)],
            width=SIZE[0],
            height=SIZE[1],
            seed=i,
            steps=20,
            guidance=2.5,
        )
        for i in range(2000)
    ]
    candidates = EditStage(world.backend("editor"), blobs).process_batch(jobs)
    verdicts = LowLevelStage(blobs, 40, 0.005).process_batch(candidates)
    rate = sum(v.passed for v in verdicts) / len(verdicts)
    assert abs(rate - null.LOWLEVEL_RATE) < 0.012, rate
    assert {v.reason for v in verdicts} == {"ok", "fragmented_change"}
    # blocks and speckles of 16 sources: a few hundred blobs for 2,000 edits
    assert len(list((tmp_path / "blobs").rglob("*.png"))) <= 16 * (
        1 + null.BLOCK_VARIANTS + null.SPECKLE_VARIANTS
    )


def test_null_is_registered_for_every_role(tmp_path: Path) -> None:
    roles = [r for r in REGISTRY if r not in PHOTO_ROLES]  # the null world mines, no photos
    cfg = PipelineConfig.from_params({role.upper(): "null" for role in roles})
    backends = build_backends(cfg, tmp_path)
    for role in roles:
        assert backends.get(role) is backends.ctx.shared("null-world", null.NullWorld).backend(role)
    assert backends.truth is None


@pytest.mark.parametrize("prompts", [8])
def test_bench_engine_runs_the_whole_chain(prompts: int) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_engine.py"), "--prompts", f"4,{prompts}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    both = json.loads(done.stdout)  # two sizes, each run in a process of its own
    assert both["prompts"] == [4, prompts] and len(both["runs"]) == 2
    peaks = [max(r["peak_rss_mb"].values()) for r in both["runs"]]
    assert both["peak_rss_mb"] == peaks and both["memory_growth"] == round(peaks[1] / peaks[0], 3)
    report = both["runs"][1]
    assert report["prompts"] == prompts
    from nhr.pipeline import CHAIN

    steps = {s["step"]: s for s in report["steps"]}
    assert report["completed"] and set(CHAIN) <= set(steps) and "summary" in steps
    assert steps["sources"]["tables"]["sources"] == prompts * 19  # it streams to the gate too
    # the edits step is the mining loop: it streams the candidates through the filters
    assert steps["edits"]["tables"]["candidates"] == report["params"]["MAX_EDIT_JOBS"]
    assert steps["edits"]["tables"]["validator"] > 0
    assert steps["export"]["rows"] and steps["export"]["rows"] > 0
    assert report["peak_rss_mb"]["self"] > 0 and report["files_written"]["files"] > 0


def test_edits_are_drawn_once_per_picture_and_given_as_copies() -> None:
    src = null.source_image(3, SIZE)
    other = null.source_image(4, SIZE)
    null._edits.clear()
    first = null.cached_edit(src, 5, False)
    assert first.tobytes() == null.block_edit(src, 5).tobytes()
    assert null.cached_edit(src, 1, True).tobytes() == null.speckle_edit(src, 1).tobytes()
    assert null.cached_edit(other, 5, False).tobytes() == null.block_edit(other, 5).tobytes()
    assert len(null._edits) == 3
    first.paste((0, 0, 0), (0, 0, *SIZE))  # a caller changing its copy changes no other
    again = null.cached_edit(src.copy(), 5, False)
    assert again.tobytes() == null.block_edit(src, 5).tobytes() and len(null._edits) == 3
