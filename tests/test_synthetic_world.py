"""The synthetic world: grammar, prompter, renderer, editor and truth."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nhr.backends.base import Editor, PromptRequest, PromptWriter, TextToImage
from nhr.backends.synthetic import (
    EDIT_TYPES,
    STYLES,
    SyntheticWorld,
    invert_instruction,
    outcome_probabilities,
    parse_instruction,
    parse_prompt,
)
from nhr.backends.synthetic.editor import OUTCOMES
from nhr.backends.synthetic.language import (
    AT_CELL,
    PHRASINGS,
    TO_CELL,
    Edit,
    Instruction,
    parse_edit,
    write_edit,
    write_instruction,
    write_prompt,
)
from nhr.backends.synthetic.prompter import draw_scene
from nhr.backends.synthetic.scene import BACKGROUNDS, COLOURS, KINDS, SIZES
from nhr.backends.synthetic.truth import pixel_hash


@pytest.fixture()
def world(tmp_path: Path) -> SyntheticWorld:
    return SyntheticWorld(tmp_path / "truth")


def _png(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def _source(world: SyntheticWorld, prompt_id: str = "p", seed: int = 0, k: int = 4, size=(160, 96)):
    draft = world.prompter.write([PromptRequest(prompt_id, seed, k, None)])[0]
    image = world.renderer.generate([draft.text], [seed], [size], 4, 0.0)[0]
    return draft, image


# ---------------------------------------------------------------- vocabulary and grammar
def test_vocabulary_sizes() -> None:
    assert len(KINDS) >= 8 and len(COLOURS) >= 10 and len(BACKGROUNDS) >= 5 and len(STYLES) >= 4
    pal = np.array(list(COLOURS.values()), float)
    d = np.linalg.norm(pal[:, None] - pal[None], axis=2) + np.eye(len(pal)) * 1e9
    assert d.min() > 70
    assert set(EDIT_TYPES) >= {
        "add",
        "remove",
        "replace",
        "recolour",
        "resize",
        "move",
        "background",
        "style",
        "compound",
    }


def _examples() -> list[Edit]:
    t = ("red", "circle")
    return [
        Edit("add", kind="star", colour="blue", size="small", cell="top right"),
        Edit("add", kind="heart", colour="orange"),
        Edit("remove", target=t),
        Edit("replace", target=t, kind="star", colour="green"),
        Edit("replace", target=t, kind="ring", colour="red", size="large"),
        Edit("recolour", target=t, colour="purple"),
        Edit("resize", target=t, size="medium"),
        Edit("resize", target=t, delta=1),
        Edit("resize", target=t, delta=-1),
        Edit("move", target=t, cell="bottom left"),
        Edit("background", background="night sky"),
        Edit("style", style="pixel-art"),
        Edit("style", style="outlined"),
    ]


@pytest.mark.parametrize("edit", _examples(), ids=lambda e: e.type)
def test_every_phrasing_round_trips(edit: Edit) -> None:
    key = edit.type
    if edit.type == "resize" and edit.size is None:
        key = "resize+" if edit.delta > 0 else "resize-"
    texts = set()
    for phrasing in range(len(PHRASINGS[key])):
        for variant in range(3):
            text = write_edit(edit, phrasing, variant)
            texts.add(text)
            assert parse_edit(text) == edit, text
            assert parse_instruction(text.capitalize() + ".").edits == (edit,)
    assert len(texts) >= 3  # several phrasings per type


def test_every_cell_phrase_parses() -> None:
    for cell in AT_CELL:
        for v in range(3):
            e = Edit("add", kind="cross", colour="lime", size="large", cell=cell)
            assert parse_edit(write_edit(e, 0, v)) == e
            m = Edit("move", target=("red", "circle"), cell=cell)
            assert parse_edit(write_edit(m, 0, v)) == m
    assert set(TO_CELL) == set(AT_CELL)


def test_compound_round_trip_and_examples() -> None:
    rng = np.random.default_rng(0)
    a, b = _examples()[5], _examples()[2]
    for tpl_index in range(len(PHRASINGS["compound"])):
        first, second = write_edit(a, tpl_index), write_edit(b, tpl_index)
        text = PHRASINGS["compound"][tpl_index].format(a=first, b=second)
        parsed = parse_instruction(text)
        assert parsed.edits == (a, b) and parsed.edit_type == "compound"
    text = write_instruction(Instruction((a, b)), rng)
    assert parse_instruction(text).edits == (a, b)
    assert parse_instruction("make the red circle blue and then remove the blue star").edits == (
        Edit("recolour", target=("red", "circle"), colour="blue"),
        Edit("remove", target=("blue", "star")),
    )
    with pytest.raises(ValueError, match="grammar"):
        parse_instruction("make it prettier")


def test_prompt_round_trip() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        scene = draw_scene(rng)
        assert parse_prompt(write_prompt(scene, rng)) == scene


# ---------------------------------------------------------------- prompter
def test_prompter_is_deterministic_distinct_and_consistent(world: SyntheticWorld) -> None:
    assert isinstance(world.prompter, PromptWriter)
    reqs = [PromptRequest(f"p{i}", i, 6, None) for i in range(60)]
    drafts = world.prompter.write(reqs)
    assert drafts == world.prompter.write(reqs)
    seen_types: collections.Counter[str] = collections.Counter()
    for d in drafts:
        scene = parse_prompt(d.text)
        assert d.style == scene.style and d.topic == scene.background
        texts = [i.text for i in d.instructions]
        assert len(texts) == 6 and len(set(texts)) == 6
        refs = {(o.colour, o.kind) for o in scene.objects}
        colours = {o.colour for o in scene.objects}
        for ins in d.instructions:
            parsed = parse_instruction(ins.text)
            assert parsed.edit_type == ins.edit_type
            seen_types[ins.edit_type] += 1
            first = parsed.edits[0]
            if first.target:
                assert first.target in refs
            if first.type == "add":
                assert first.colour not in colours
    assert set(seen_types) == set(EDIT_TYPES)
    assert 0.08 < seen_types["compound"] / sum(seen_types.values()) < 0.35
    styled = world.prompter.write([PromptRequest("s", 1, 2, "grainy")])[0]
    assert styled.style == "grainy"
    with pytest.raises(ValueError, match="unknown style"):
        world.prompter.write([PromptRequest("s", 1, 2, "cubist")])


# ---------------------------------------------------------------- renderer
def test_renderer_deterministic_and_seed_moves_layout(world: SyntheticWorld) -> None:
    assert isinstance(world.renderer, TextToImage) and world.renderer.size_multiple == 8
    draft, a = _source(world, seed=1)
    b = world.renderer.generate([draft.text], [1], [(160, 96)], 4, 0.0)[0]
    c = world.renderer.generate([draft.text], [2], [(160, 96)], 4, 0.0)[0]
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize(
    "size", [(32, 32), (32, 192), (192, 32), (256, 128), (128, 256), (600, 100), (33, 47)]
)
def test_sizes_and_aspects_honoured(world: SyntheticWorld, size: tuple[int, int]) -> None:
    draft = world.prompter.write([PromptRequest("z", 7, 2, None)])[0]
    img = world.renderer.generate([draft.text], [0], [size], 4, 0.0)[0]
    assert img.size == size and img.mode == "RGB"
    out = world.editor.edit([img], [draft.instructions[0].text], [0], [20], 3.5)[0]
    assert out.size == size


def test_large_render(world: SyntheticWorld) -> None:
    draft = world.prompter.write([PromptRequest("big", 3, 1, None)])[0]
    img = world.renderer.generate([draft.text], [0], [(2200, 368)], 4, 0.0)[0]
    assert img.size == (2200, 368)
    assert world.truth.source(img) is not None


def test_renderer_rejects_foreign_prompt_and_bad_size(world: SyntheticWorld) -> None:
    with pytest.raises(ValueError, match="grammar"):
        world.renderer.generate(["a photo of a cat"], [0], [(64, 64)], 4, 0.0)
    draft = world.prompter.write([PromptRequest("z", 7, 1, None)])[0]
    with pytest.raises(ValueError, match="out of range"):
        world.renderer.generate([draft.text], [0], [(4, 64)], 4, 0.0)


def test_implausible_rate(tmp_path: Path) -> None:
    world = SyntheticWorld(tmp_path / "t", implausible_rate=0.4)
    clean = SyntheticWorld(tmp_path / "u", implausible_rate=0.0)
    drafts = world.prompter.write([PromptRequest(f"p{i}", i, 0, None) for i in range(150)])
    texts = [d.text for d in drafts]
    sizes = [(96, 64)] * len(texts)
    imgs = world.renderer.generate(texts, list(range(len(texts))), sizes, 4, 0.0)
    bad = [world.truth.source(i) for i in imgs]
    share = np.mean([not b.plausible for b in bad])
    assert 0.28 < share < 0.52
    kinds = {b.defects[0].split(":")[0] for b in bad if b.defects}
    assert kinds == {"missing", "clipped", "extra"}
    imgs = clean.renderer.generate(texts, list(range(len(texts))), sizes, 4, 0.0)
    assert all(clean.truth.source(i).plausible for i in imgs)


# ---------------------------------------------------------------- editor
def test_editor_failure_modes_and_controls(world: SyntheticWorld) -> None:
    assert isinstance(world.editor, Editor)
    counts: dict[float, collections.Counter[str]] = {}
    for g in (1.0, 3.5, 7.0):
        c: collections.Counter[str] = collections.Counter()
        for i in range(25):
            draft, src = _source(world, f"e{i}", i, k=3)
            for ins in draft.instructions:
                outs = world.editor.edit([src] * 4, [ins.text] * 4, [0, 1, 2, 3], [24] * 4, g)
                for o in outs:
                    assert o.size == src.size
                    c[world.truth.triplet(src, ins.text, o).outcome] += 1
        counts[g] = c
    mid = counts[3.5]
    assert {
        "correct",
        "no_change",
        "wrong_target",
        "partial",
        "collateral",
        "drift",
        "artifacts",
    } <= set(mid)
    share = {g: {k: v / sum(c.values()) for k, v in c.items()} for g, c in counts.items()}
    assert 0.2 < share[3.5]["correct"] < 0.4
    assert share[1.0]["no_change"] > share[3.5]["no_change"]
    assert share[7.0]["drift"] > share[3.5]["drift"]
    assert share[3.5]["correct"] > max(share[1.0].get("correct", 0), share[7.0].get("correct", 0))
    p = outcome_probabilities(24, 3.5)
    assert set(p) == set(OUTCOMES) and abs(sum(p.values()) - 1) < 1e-9


def test_hard_pairs_fail_on_every_seed_and_come_at_their_share(tmp_path: Path) -> None:
    world = SyntheticWorld(tmp_path / "truth", hard_share=0.4)
    plain = SyntheticWorld(tmp_path / "truth")  # same truth folder: same sources
    pairs = hard = correct_easy = 0
    for i in range(20):
        draft, src = _source(world, f"h{i}", i, k=3)
        digest = pixel_hash(src)
        for ins in draft.instructions:
            pairs += 1
            seeds = list(range(8))
            outs = world.editor.edit([src] * 8, [ins.text] * 8, seeds, [24] * 8, 3.5)
            outcomes = [world.truth.triplet(src, ins.text, o).outcome for o in outs]
            if world.editor.is_hard(digest, ins.text):
                hard += 1
                assert "correct" not in outcomes, ins.text
                assert outcomes.count("no_change") >= 3  # mostly: nothing changes
            else:
                correct_easy += outcomes.count("correct")
                # an easy pair is edited exactly as in a world without hard pairs
                again = plain.editor.edit([src] * 8, [ins.text] * 8, seeds, [24] * 8, 3.5)
                assert [a.tobytes() for a in again] == [o.tobytes() for o in outs]
    assert 0.2 < hard / pairs < 0.6
    assert correct_easy > 0
    assert not plain.editor.is_hard(digest, draft.instructions[0].text)
    with pytest.raises(ValueError, match="hard_share"):
        SyntheticWorld(tmp_path / "t2", hard_share=1.5)


def test_editor_deterministic_and_seed_dependent(world: SyntheticWorld) -> None:
    draft, src = _source(world, "d", 4, k=1)
    text = draft.instructions[0].text
    a = world.editor.edit([src], [text], [5], [20], 3.0)[0]
    b = world.editor.edit([src], [text], [5], [20], 3.0)[0]
    assert a.tobytes() == b.tobytes()
    outs = {world.editor.edit([src], [text], [s], [20], 3.0)[0].tobytes() for s in range(12)}
    assert len(outs) > 1


def test_editor_rejects_foreign_image(world: SyntheticWorld) -> None:
    foreign = Image.new("RGB", (64, 64), (1, 2, 3))
    with pytest.raises(ValueError, match="SyntheticRenderer"):
        world.editor.edit([foreign], ["remove the red circle"], [0], [20], 3.5)


# ---------------------------------------------------------------- truth
def test_png_round_trip_keeps_truth(world: SyntheticWorld) -> None:
    draft, src = _source(world, "png", 11, k=2)
    src2 = _png(src)
    assert world.truth.source(src2) == world.truth.source(src)
    text = draft.instructions[0].text
    out = world.editor.edit([src2], [text], [0], [24], 3.5)[0]
    out2 = _png(out)
    assert world.truth.triplet(src2, text, out2) == world.truth.triplet(src, text, out)
    leftovers = list((world.truth_dir).rglob(".tmp-*"))
    assert leftovers == []


def test_truth_unknown_image(world: SyntheticWorld) -> None:
    foreign = Image.new("RGB", (64, 64), (1, 2, 3))
    with pytest.raises(KeyError, match="unknown to the synthetic truth store"):
        world.truth.source(foreign)


def _edit_until(world, src, text, outcome: str) -> Image.Image:
    for seed in range(300):
        out = world.editor.edit([src], [text], [seed], [24], 3.5)[0]
        if world.truth.triplet(src, text, out).outcome == outcome:
            return out
    raise AssertionError(f"no {outcome} edit found")


def test_inverse_triplet_is_correct(tmp_path: Path) -> None:
    world = SyntheticWorld(tmp_path / "t", implausible_rate=0.0)
    prompt = (
        "A flat-style picture of a large red circle on the left and a small blue star "
        "at the top right, on a night sky background."
    )
    src = world.renderer.generate([prompt], [0], [(200, 120)], 4, 0.0)[0]
    forward = "remove the red circle"
    edited = _edit_until(world, src, forward, "correct")
    inverse = invert_instruction(forward, prompt)
    assert inverse == "add a large red circle on the left"
    assert not {"revert", "undo", "restore", "back"} & set(inverse.split())
    t = world.truth.triplet(edited, inverse, src)
    assert t.correct and t.outcome == "correct" and t.adherence == 5.0
    # a wrong inverse is not correct
    assert not world.truth.triplet(edited, "add a large green circle on the left", src).correct
    # composition: two accepted edits of one source
    second = "make the blue star yellow"
    edited2 = _edit_until(world, src, second, "correct")
    composed = f"{inverse} and then {second}"
    assert world.truth.triplet(edited, composed, edited2).correct
    # inverse of a recolour and of a compound
    inv2 = invert_instruction(second, prompt)
    assert world.truth.triplet(edited2, inv2, src).correct
    both = "make the blue star yellow and then remove the red circle"
    e3 = _edit_until(world, src, both, "correct")
    assert world.truth.triplet(e3, invert_instruction(both, prompt), src).correct


def test_truth_grades_failures(world: SyntheticWorld) -> None:
    draft, src = _source(world, "g", 21, k=3)
    by: dict[str, list[float]] = collections.defaultdict(list)
    for ins in draft.instructions:
        for seed in range(30):
            out = world.editor.edit([src], [ins.text], [seed], [24], 3.5)[0]
            t = world.truth.triplet(src, ins.text, out)
            by[t.outcome].append(t.adherence)
            assert 1.0 <= t.adherence <= 5.0 and 1.0 <= t.aesthetic <= 5.0
            assert t.correct == (t.outcome == "correct")
    assert np.mean(by["no_change"]) < np.mean(by["correct"])
    bad = world.truth.triplet(src, "make it prettier", src)
    assert bad.outcome == "unparseable" and not bad.correct


def test_world_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="implausible_rate"):
        SyntheticWorld(tmp_path, implausible_rate=1.5)
    with pytest.raises(ValueError, match="seed"):
        SyntheticWorld(tmp_path, seed="x")  # type: ignore[arg-type]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        SyntheticWorld(f)
    assert SIZES == ("small", "medium", "large")
