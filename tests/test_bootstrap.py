"""Bootstrapping: inverse wording, backward consistency, composition caps, dedup, resume."""

import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from nhr.backends.base import TextAnswer
from nhr.backends.synthetic.inverter import SyntheticInverter
from nhr.backends.synthetic.language import parse_instruction, parse_prompt
from nhr.bootstrap import backward_consistency
from nhr.records import ComposeJob, DraftRow, TripletRow, Verdict, from_table, to_table
from nhr.stages.composition import plan_compose_jobs
from nhr.stages.dedup import dedup, image_hashes
from nhr.stages.inversion import InversionStage, banned_word
from nhr.store import RunStore

PROMPT = "A flat-style picture of a large red circle on the left, on a sand beach background."


def _triplet(tid: str, source_id: str = "s0", src: str = "a", edit: str = "b", **kw) -> TripletRow:
    base = dict(
        triplet_id=tid,
        origin="mined",
        parents=(tid,),
        source_image=src,
        edited_image=edit,
        instruction="remove the red circle",
        edit_type="remove",
        style="flat",
        width=8,
        height=8,
        adherence=4.9,
        aesthetic=4.9,
        score=4.9,
        prompt_id="p0",
        prompt=PROMPT,
        source_id=source_id,
        candidate_id=tid,
        t2i_model="t",
        t2i_seed=1,
        t2i_steps=4,
        editor_model="e",
        edit_seed=2,
        edit_steps=20,
        edit_guidance=2.5,
        prompter_version="v",
        writer_version="v",
        judge_id="j",
        judge_prompt_version="jv",
    )
    return TripletRow(**{**base, **kw})


def test_banned_words_are_refused_but_background_is_fine():
    assert banned_word("put the hat back on") == "back"
    assert banned_word("Revert the colour") == "revert"
    assert banned_word("restoring the scene") == "restoring"
    assert banned_word("undo it") == "undo"
    assert banned_word("change the background to a night sky") is None


def test_inverses_keep_the_sources_attributes_and_never_use_banned_words(tiny_chain):
    inverter = SyntheticInverter()
    mined = tiny_chain.rows("mined")
    answers = inverter.invert([t.instruction for t in mined], [t.prompt for t in mined])
    assert sum(a.error is None for a in answers) >= 0.9 * len(mined)
    checked = 0
    for t, ans in zip(mined, answers, strict=True):
        if ans.error:
            continue
        assert banned_word(ans.text) is None, ans.text
        forward = parse_instruction(t.instruction)
        if forward.edit_type == "remove":
            (removed,) = forward.edits
            spec = {(o.colour, o.kind): o for o in parse_prompt(t.prompt).objects}[removed.target]
            (inverse,) = parse_instruction(ans.text).edits
            assert inverse.type == "add"
            assert (inverse.colour, inverse.kind, inverse.size, inverse.cell) == (
                spec.colour,
                spec.kind,
                spec.size,
                spec.cell,
            )
            checked += 1
    text = inverter.invert(
        ["delete the red circle"],
        ["A flat-style picture of a large red circle on the left, on a sand beach background."],
    )[0].text
    assert text.startswith(("add", "put", "place", "insert", "draw", "include"))
    assert "large red circle" in text and "left" in text


def test_a_writer_using_a_banned_word_is_skipped_with_its_reason():
    class Sloppy:
        model_id, version = "sloppy", "v0"

        def invert(self, instructions, prompts):
            return [TextAnswer("put the red circle back"), TextAnswer("", error="no_inverse: x")]

        def compose(self, a, b, p):
            raise AssertionError

    drafts = InversionStage(Sloppy()).process_batch([_triplet("m-1"), _triplet("m-2")])
    assert [d.skip_reason for d in drafts] == ["banned_word: back", "no_inverse: x"]
    assert all(d.instruction == "" for d in drafts)
    assert (drafts[0].source_image, drafts[0].edited_image) == ("b", "a")  # (Ie, p⁻¹, I0)


def test_a_backward_inconsistent_pair_is_dropped_with_both_sides():
    mined = [_triplet("m-1"), _triplet("m-2", edit="c"), _triplet("m-3", edit="d")]
    drafts = [
        DraftRow("i-m-1", "inverted", ("m-1",), "b", "a", "add a red circle", None, "w", "v"),
        DraftRow("i-m-2", "inverted", ("m-2",), "c", "a", "add a red circle", None, "w", "v"),
        DraftRow("i-m-3", "inverted", ("m-3",), "d", "a", "", "no_inverse: x", "w", "v"),
    ]
    verdicts = [
        Verdict("i-m-1", True, "ok", 4.8, 4.9, "{}", "j", "v", None),
        Verdict("i-m-2", False, "low_adherence", 2.0, 4.9, "{}", "j", "v", None),
    ]
    forwards, inverses, drops = backward_consistency(
        to_table(mined, TripletRow), to_table(drafts, DraftRow), to_table(verdicts, Verdict)
    )
    forwards, inverses = from_table(forwards, TripletRow), from_table(inverses, TripletRow)
    assert [t.triplet_id for t in forwards] == ["m-1", "m-3"]
    assert [t.triplet_id for t in inverses] == ["i-m-1"]
    assert inverses[0].origin == "inverted" and inverses[0].parents == ("m-1",)
    assert inverses[0].edit_type == "add" and inverses[0].edited_image == "a"
    assert drops == {
        "backward_inconsistent_forward": 1,
        "backward_inconsistent_inverse": 1,
        "inverse_skipped_no_inverse": 1,
    }


def test_composition_is_capped_per_source_and_skips_identical_pairs():
    forwards = [_triplet(f"m-{i}", edit=f"e{i}") for i in range(5)]
    forwards += [
        _triplet("m-x", source_id="s1", edit="z"),
        _triplet("m-y", source_id="s1", edit="z"),
    ]
    inverses = _inverses(forwards)
    forwards = to_table(forwards, TripletRow)
    jobs = _jobs(forwards, inverses, max_pairs_per_source=3, seed=0)
    assert len([j for j in jobs if j.first.startswith("m-") and j.first[2:].isdigit()]) == 3
    assert not [j for j in jobs if j.first in ("m-x", "m-y")]  # identical edited images
    assert len({j.job_id for j in jobs}) == len(jobs)
    assert all(j.first != j.second for j in jobs)
    uncapped = _jobs(forwards, inverses, max_pairs_per_source=100, seed=0)
    assert len(uncapped) == 5 * 4  # every ordered pair of s0
    no_inverse = _jobs(forwards, _inverses([]), max_pairs_per_source=100, seed=0)
    assert no_inverse == []


def _inverses(forwards: list[TripletRow]) -> pa.Table:
    """Accepted inverse triplets of ``forwards`` (instruction "inverse")."""
    return to_table(
        [
            _triplet(
                f"i-{t.triplet_id}",
                origin="inverted",
                parents=(t.triplet_id,),
                instruction="inverse",
            )
            for t in forwards
        ],
        TripletRow,
    )


def _jobs(forwards: pa.Table, inverses: pa.Table, **kw) -> list[ComposeJob]:
    return from_table(plan_compose_jobs(forwards, inverses, **kw), ComposeJob)


def _img(seed: int, noise: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (8, 8, 3)), np.ones((16, 16, 1))).astype(np.int16)
    if noise:
        base += np.random.default_rng(99).integers(-noise, noise + 1, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def test_dedup_removes_exact_and_planted_near_duplicates(tmp_path):
    store = RunStore(tmp_path)
    a, b, c = (store.blobs.put(_img(i)) for i in range(3))
    a_noisy, b_noisy = store.blobs.put(_img(0, noise=3)), store.blobs.put(_img(1, noise=3))
    assert a_noisy != a
    rows = [
        _triplet("m-1", src=a, edit=b, score=4.9),
        _triplet("i-m-1", src=a, edit=b, origin="inverted", score=5.0),  # exact duplicate
        _triplet("m-2", src=a_noisy, edit=b_noisy, score=4.8),  # near duplicate of m-1
        _triplet("m-3", src=a, edit=c),  # a different edit of the same source: kept
        _triplet("m-4", src=b, edit=a),  # the reverse pair is a different triplet: kept
    ]
    table = to_table(rows, TripletRow)
    images = pa.chunked_array([table.column("source_image"), table.column("edited_image")])
    loads: list[str] = []

    def load(rel: str) -> Image.Image:
        loads.append(rel)
        return store.blobs.get(rel)

    hashes, counts = image_hashes(images, None, load)
    assert counts == {"reused": 0, "computed": 5} and hashes.num_rows == 5
    kept, drops, duplicate_of = dedup(table, hashes, store.blobs.get)
    assert sorted(kept.column("triplet_id").to_pylist()) == ["m-1", "m-3", "m-4"]
    assert drops == {"exact_duplicate": 1, "near_duplicate": 1}
    assert duplicate_of == {"i-m-1": "m-1", "m-2": "m-1"}
    loads.clear()
    again, counts = image_hashes(images, hashes, load)
    assert counts == {"reused": 5, "computed": 0} and loads == []  # hashes are reused
    assert again.equals(hashes)


def test_bootstrapped_run_meets_the_audit(tiny_chain):
    triplets = tiny_chain.triplets()
    origins = {t.origin for t in triplets}
    assert origins == {"mined", "inverted", "composed"}
    pairs = [(t.source_image, t.edited_image) for t in triplets]
    assert len(pairs) == len(set(pairs))
    for t in triplets:
        if t.origin == "inverted":
            assert t.triplet_id == f"i-{t.parents[0]}" and banned_word(t.instruction) is None
        if t.origin == "composed":
            assert len(t.parents) == 2
    from nhr.evaluate.truth import audit

    shares = audit(tiny_chain.tables, tiny_chain.backends.truth)
    assert all(share >= 0.9 for share in shares.values()), shares


class CrashingInverter(SyntheticInverter):
    """Dies after a number of inverses, like a process killed mid-stage."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def invert(self, instructions, prompts):
        self.budget -= len(instructions)
        if self.budget < 0:
            raise KeyboardInterrupt("killed")
        return super().invert(instructions, prompts)


def test_bootstrap_stages_resume_after_a_kill(tiny_chain, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(tiny_chain.store.root, run)
    for table in ("inversion", "backward", "composition", "composed_validator", "triplets"):
        shutil.rmtree(run / "tables" / table, ignore_errors=True)
    from nhr.pipeline import Pipeline

    pipe = Pipeline(run, tiny_chain.cfg, progress=False)
    pipe.runner.batch_size = 4
    pipe.backends._built["inverter"] = CrashingInverter(budget=9)
    with pytest.raises(KeyboardInterrupt):
        pipe.bootstrap.invert()
    partial = len(pipe.rows("inversion"))
    assert 0 < partial < len(pipe.rows("mined"))
    pipe.backends._built["inverter"] = SyntheticInverter()
    for step in ("invert", "backward", "compose", "validate_composed", "assemble"):
        getattr(pipe.bootstrap, step)()

    def rows(p, table):
        return sorted(json.dumps(r.to_row(), sort_keys=True) for r in p.rows(table))

    for table in ("inversion", "backward", "composition", "composed_validator", "triplets"):
        assert rows(pipe, table) == rows(tiny_chain, table), table
