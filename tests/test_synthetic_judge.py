"""The synthetic judge: pixels and text only, and good enough to mine with."""

from __future__ import annotations

import ast
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from nhr.backends.base import Judge, PrefilterAnswer, PromptRequest, Scores
from nhr.backends.synthetic import SyntheticWorld
from nhr.backends.synthetic import judge as judge_module
from nhr.backends.synthetic import perception as perception_module
from nhr.backends.synthetic.measure import random_size


def _fresh(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """~500 candidates from gated sources, with their truth."""
    world = SyntheticWorld(tmp_path_factory.mktemp("truth"))
    rng = np.random.default_rng(5)
    drafts = world.prompter.write([PromptRequest(f"q{i}", 100 + i, 3, None) for i in range(70)])
    sources, rows = [], []
    for d in drafts:
        for j in range(2):
            src = world.renderer.generate([d.text], [j], [random_size(rng)], 4, 0.0)[0]
            gate = world.judge.plausibility([src], [d.text])[0]
            sources.append((src, d.text, gate.answer, world.truth.source(src).plausible))
            if not gate.answer:
                continue
            for ins in d.instructions:
                seeds = [0, 1, 2]
                outs = world.editor.edit([src] * 3, [ins.text] * 3, seeds, [24] * 3, 3.5)
                for out in outs:
                    rows.append((src, ins.text, out, world.truth.triplet(src, ins.text, out)))
    return world, sources, rows


def test_protocol_and_ids(sample) -> None:
    world = sample[0]
    assert isinstance(world.judge, Judge)
    assert world.judge.judge_id == "synthetic-judge-v1"
    assert world.judge.prompt_version == "synthetic-judge-prompt-v1"


def test_judge_code_never_imports_the_truth() -> None:
    for module in (judge_module, perception_module):
        tree = ast.parse(Path(module.__file__).read_text())
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names.append(node.module or "")
                names += [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names += [a.name for a in node.names]
        assert not any("truth" in n.lower() or "editor" in n.lower() for n in names), names


def test_judge_answers_without_truth_folder(sample, tmp_path: Path) -> None:
    world, sources, rows = sample
    picked = rows[:40]
    s = [r[0] for r in picked]
    e = [r[2] for r in picked]
    t = [r[1] for r in picked]
    before = (world.judge.score(s, e, t), world.judge.prefilter(s, e, t))
    gate_before = world.judge.plausibility(
        [x[0] for x in sources[:20]], [x[1] for x in sources[:20]]
    )
    backup = tmp_path / "backup"
    shutil.move(world.truth_dir, backup)  # the truth folder is gone while the judge runs
    try:
        fresh_judge = type(world.judge)()
        s2, e2 = [_fresh(x) for x in s], [_fresh(x) for x in e]
        after = (fresh_judge.score(s2, e2, t), fresh_judge.prefilter(s2, e2, t))
        gate_after = fresh_judge.plausibility(
            [_fresh(x[0]) for x in sources[:20]], [x[1] for x in sources[:20]]
        )
        assert not world.truth_dir.exists()
    finally:
        shutil.move(backup, world.truth_dir)
    assert before == after
    assert gate_before == gate_after


def test_gate_agrees_with_truth(sample) -> None:
    _, sources, _ = sample
    agree = np.mean([gate == truth for _, _, gate, truth in sources])
    assert agree >= 0.9


def test_score_quality(sample) -> None:
    _, _, rows = sample
    world = sample[0]
    scores = world.judge.score([r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows])
    assert len(rows) >= 300
    correct = np.array([r[3].correct for r in rows])
    passed = np.array([s.adherence >= 4.7 and s.aesthetic >= 4.7 for s in scores])
    assert all(1.0 <= s.adherence <= 5.0 and 1.0 <= s.aesthetic <= 5.0 for s in scores)
    assert 0.2 < correct.mean() < 0.42  # most candidates fail
    precision = correct[passed].mean()
    recall = passed[correct].mean()
    rho = stats.spearmanr([s.adherence for s in scores], [r[3].adherence for r in rows])[0]
    assert precision >= 0.95, precision
    assert recall >= 0.5, recall
    assert 0.5 <= rho < 1.0, rho
    # graded by severity: no change < wrong target < partial < correct
    by = {}
    for s, r in zip(scores, rows, strict=True):
        by.setdefault(r[3].outcome, []).append(s)
    mean_adh = {k: np.mean([s.adherence for s in v]) for k, v in by.items()}
    assert mean_adh["no_change"] < mean_adh["partial"] < mean_adh["correct"]
    assert mean_adh["wrong_target"] < mean_adh["partial"]
    mean_aes = {k: np.mean([s.aesthetic for s in v]) for k, v in by.items()}
    assert mean_aes["drift"] < 4.5 and mean_aes["artifacts"] < 4.5 and mean_aes["correct"] > 4.7
    # deterministic
    again = world.judge.score(
        [r[0] for r in rows[:30]], [r[2] for r in rows[:30]], [r[1] for r in rows[:30]]
    )
    assert again == scores[:30]


def test_prefilter_is_loose_but_rejects_obvious_failures(sample) -> None:
    world, _, rows = sample
    answers = world.judge.prefilter(
        [r[0] for r in rows], [r[2] for r in rows], [r[1] for r in rows]
    )
    assert all(isinstance(a, PrefilterAnswer) and a.error is None for a in answers)
    passed = np.array(
        [(not a.unwanted_changes) and a.aesthetic_ok and a.scores.adherence >= 3 for a in answers]
    )
    correct = np.array([r[3].correct for r in rows])
    assert 0.3 < 1 - passed.mean() < 0.7  # roughly half rejected
    assert passed[correct].mean() >= 0.9  # high recall
    outcome = np.array([r[3].outcome for r in rows])
    for bad in ("no_change", "drift", "collateral"):
        if (outcome == bad).sum() >= 5:
            assert passed[outcome == bad].mean() < 0.2, bad


def test_judge_never_raises_on_weird_input(sample) -> None:
    world, _, rows = sample
    src, text, out, _ = rows[0]
    j = world.judge
    assert j.score([src], [out], ["make it prettier"]) == [
        Scores(1.0, 1.0, error="unparseable instruction")
    ]
    tiny = Image.new("RGB", (4, 4))
    assert j.score([tiny], [tiny], [text])[0].error
    assert j.score([src], ["not an image"], [text])[0].error  # type: ignore[list-item]
    odd = j.score([src.convert("L")], [out.resize((50, 70))], [text])[0]
    assert 1.0 <= odd.adherence <= 5.0
    pf = j.prefilter([src], [out], ["???"])[0]
    assert pf.error and pf.scores.error
    yn = j.plausibility([src], ["a photo of a cat"])[0]
    assert yn.error and not yn.answer
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert j.plausibility([noise], [rows[0][1]])[0].answer in (True, False)
    with pytest.raises(ValueError):
        j.score([src], [out, out], [text])
