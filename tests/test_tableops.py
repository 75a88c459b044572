"""The whole-table steps as table operations give exactly what the per-row Python
versions gave, on random tables with ties, skips, caps and missing parents; the run view
never imports the pipeline; whole-table steps are recorded and not redone."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from nhr.bootstrap import backward_consistency, composed_triplets
from nhr.records import (
    CandidateRow,
    ComposeJob,
    DraftRow,
    PromptRow,
    SourceRow,
    TripletRow,
    Verdict,
    from_table,
    to_table,
)
from nhr.stages.composition import plan_compose_jobs
from nhr.stages.dedup import dedup, image_hashes
from nhr.stages.preference import preference_pairs
from nhr.stages.validator import select_argmax
from tests import reference_tableops as ref

SCORES = (3.0, 4.6, 4.7, 4.8, 5.0)  # few values, so ties are common


def _world(seed: int) -> dict:
    """Random prompts, sources, candidates and validator verdicts (ids in shuffled order)."""
    rng = np.random.default_rng(seed)
    prompts = [
        PromptRow(f"p{i}", i, f"prompt {i}", "flat", "t", ("a", "b", "c"), ("add",) * 3, "w", "v1")
        for i in range(4)
    ]
    sources = [
        SourceRow(
            f"s{rng.integers(1e6)}-{i}",
            f"p{i % 4}",
            "t",
            "flat",
            i,
            8,
            8,
            f"src{i}",
            "m",
            4,
            0.0,
            0.0,
        )
        for i in range(12)
    ]
    candidates = []
    for s in sources:
        for k in range(3):
            for m in range(int(rng.integers(1, 5))):
                cid = f"c{rng.integers(1e9):09d}"
                edit_type = str(rng.choice(["add", "remove", "colour"]))
                candidates.append(
                    CandidateRow(
                        cid,
                        s.source_id,
                        s.prompt_id,
                        f"{s.prompt_id}-i{k}",
                        f"do {k}",
                        edit_type,
                        "flat",
                        s.image,
                        f"img{rng.integers(6)}",
                        8,
                        8,
                        m,
                        20,
                        2.5,
                        "ed",
                        0.0,
                    )
                )
    rng.shuffle(candidates)
    verdicts = []
    for c in candidates:
        adh, aes = float(rng.choice(SCORES)), float(rng.choice(SCORES))
        passed = bool(min(adh, aes) >= 4.7 and rng.random() < 0.9)
        missing = not passed and rng.random() < 0.2
        verdicts.append(
            Verdict(
                c.candidate_id,
                passed,
                "ok" if passed else "low_adherence",
                None if missing else adh,
                None if missing else aes,
                "{}",
                "j",
                "jv",
                None,
            )
        )
    return {"prompts": prompts, "sources": sources, "candidates": candidates, "validator": verdicts}


def _rows(records: list) -> list[str]:
    return [json.dumps(r.to_row(), sort_keys=True) for r in records]


def _select(w: dict) -> tuple[pa.Table, dict]:
    return select_argmax(
        to_table(w["candidates"], CandidateRow),
        to_table(w["validator"], Verdict),
        to_table(w["sources"], SourceRow),
        to_table(w["prompts"], PromptRow),
    )


@pytest.mark.parametrize("seed", range(6))
def test_argmax_matches_the_reference(seed):
    w = _world(seed)
    table, drops = _select(w)
    old, old_drops = ref.select_argmax(
        w["candidates"],
        w["validator"],
        {s.source_id: s for s in w["sources"]},
        {p.prompt_id: p for p in w["prompts"]},
    )
    assert table.num_rows > 3 and drops["not_argmax"] > 0
    assert _rows(from_table(table, TripletRow)) == _rows(old)
    assert drops == old_drops


def _bootstrap_world(seed: int) -> tuple[list[TripletRow], list[DraftRow], list[Verdict]]:
    """Mined triplets, their inverse drafts (some skipped, some missing) and verdicts."""
    rng = np.random.default_rng(100 + seed)
    mined, _ = ref.select_argmax(
        *(
            lambda w: (
                w["candidates"],
                w["validator"],
                {s.source_id: s for s in w["sources"]},
                {p.prompt_id: p for p in w["prompts"]},
            )
        )(_world(seed))
    )
    drafts, verdicts = [], []
    for t in mined:
        if rng.random() < 0.1:
            continue  # no draft at all
        skip = rng.choice([None, None, None, "", "no_inverse: x", "banned_word: back"])
        drafts.append(
            DraftRow(
                f"i-{t.triplet_id}",
                "inverted",
                (t.triplet_id,),
                t.edited_image,
                t.source_image,
                "" if skip else f"undo {t.instruction}",
                skip,
                "w",
                "wv",
            )
        )
        if not skip:
            adh = float(rng.choice(SCORES))
            verdicts.append(
                Verdict(f"i-{t.triplet_id}", adh >= 4.7, "x", adh, 4.9, "{}", "jb", "bv", None)
            )
    rng.shuffle(drafts)
    return mined, drafts, verdicts


@pytest.mark.parametrize("seed", range(6))
def test_backward_and_composition_match_the_reference(seed):
    mined, drafts, verdicts = _bootstrap_world(seed)
    fwd, inv, drops = backward_consistency(
        to_table(mined, TripletRow), to_table(drafts, DraftRow), to_table(verdicts, Verdict)
    )
    old_fwd, old_inv, old_drops = ref.backward_consistency(mined, drafts, verdicts)
    assert len(old_fwd) < len(mined) and old_inv
    assert _rows(from_table(fwd, TripletRow)) == _rows(old_fwd)
    assert _rows(from_table(inv, TripletRow)) == _rows(old_inv)
    assert dict(drops) == dict(old_drops)
    for cap in (1, 3, 100):
        jobs = from_table(plan_compose_jobs(fwd, inv, cap, seed), ComposeJob)
        texts = {i.parents[0]: i.instruction for i in old_inv}
        assert jobs == ref.plan_compose_jobs(old_fwd, texts, cap, seed)
    # composed drafts: some skipped, some with a dropped parent, verdicts for some
    rng = np.random.default_rng(seed)
    jobs = ref.plan_compose_jobs(old_fwd, texts, 100, seed)
    cdrafts = [
        DraftRow(
            j.job_id,
            "composed",
            (j.first, "gone" if rng.random() < 0.1 else j.second),
            j.first_image,
            j.second_image,
            "compose",
            rng.choice([None, "no_inverse: y"], p=[0.8, 0.2]),
            "w",
            "wv",
        )
        for j in jobs
    ]
    cverdicts = [
        Verdict(
            d.triplet_id,
            bool(rng.random() < 0.7),
            "x",
            4.8,
            float(rng.choice(SCORES)),
            "{}",
            "jc",
            "cv",
            None,
        )
        for d in cdrafts
        if rng.random() < 0.9
    ]
    assert cdrafts
    for validated in (cverdicts, None):
        table, cdrops = composed_triplets(
            fwd,
            to_table(cdrafts, DraftRow),
            None if validated is None else to_table(validated, Verdict),
        )
        old, old_cdrops = ref.composed_reference(old_fwd, cdrafts, validated)
        assert _rows(from_table(table, TripletRow)) == _rows(old)
        assert dict(cdrops) == dict(old_cdrops)


@pytest.mark.parametrize("seed", range(6))
def test_preference_pairs_match_the_reference_hardest_first(seed):
    w = _world(seed)
    rng = np.random.default_rng(seed)
    mined, _ = ref.select_argmax(
        w["candidates"],
        w["validator"],
        {s.source_id: s for s in w["sources"]},
        {p.prompt_id: p for p in w["prompts"]},
    )
    stages = {}
    for name in ("prefilter", "lowlevel"):
        stages[name] = [
            Verdict(
                c.candidate_id,
                bool(rng.random() < 0.8),
                "r",
                float(rng.choice(SCORES)),
                None if rng.random() < 0.2 else float(rng.choice(SCORES)),
                "{}",
                "j",
                "v",
                None,
            )
            for c in w["candidates"]
        ]
    stages["validator"] = w["validator"]
    chosen = {t.candidate_id for t in mined}
    for name in ("prefilter", "lowlevel"):  # a mined candidate passed every filter
        stages[name] = [
            v
            if v.subject_id not in chosen
            else Verdict(v.subject_id, True, "ok", 5.0, 5.0, "{}", "j", "v", None)
            for v in stages[name]
        ]
    for per_group in (1, 2, 5):
        table = preference_pairs(
            to_table(mined, TripletRow),
            to_table(w["candidates"], CandidateRow),
            {k: to_table(v, Verdict) for k, v in stages.items()},
            per_group,
        )
        old = ref.preference_pairs(mined, w["candidates"], stages, per_group)
        assert len(old) > 0
        assert table.to_pylist() == [vars(p) for p in old]


def test_dedup_matches_the_reference_on_a_run(tiny_chain):
    forwards, inverses, _ = tiny_chain.bootstrap.consistent()
    composed, _ = tiny_chain.bootstrap.composed(forwards)
    rows = pa.concat_tables([forwards, inverses, composed, forwards.slice(0, 5)])  # + exact dups
    rows = rows.set_column(
        0,
        "triplet_id",
        pa.array([f"{i:05d}-{t}" for i, t in enumerate(rows.column("triplet_id").to_pylist())]),
    )
    blobs = tiny_chain.store.blobs
    images = pa.chunked_array([rows.column("source_image"), rows.column("edited_image")])
    hashes, _ = image_hashes(images, None, blobs.get)
    kept, drops, dup = dedup(rows, hashes, blobs.get, 4)
    old_kept, old_drops, old_dup = ref.dedup(from_table(rows, TripletRow), blobs.get, 4)
    assert drops == old_drops and drops["exact_duplicate"] >= 5
    assert dup == old_dup
    assert _rows(from_table(kept, TripletRow)) == _rows(old_kept)


def test_the_run_view_and_evaluation_never_import_the_pipeline():
    code = (
        "import sys\n"
        "import nhr.tables, nhr.summary, nhr.evaluate.truth, nhr.bootstrap, nhr.stages.export\n"
        "import nhr.evaluate.calibration, nhr.evaluate.survival\n"
        "print('nhr.pipeline' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    lone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, nhr.tables; print(sorted(m for m in sys.modules if m.startswith('nhr')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert set(eval(lone.stdout)) <= {
        "nhr",
        "nhr.allocators",  # what ``import nhr`` sets up first
        "nhr.tables",
        "nhr.hashing",  # kept-key sets hashed once per filtered read
        "nhr.records",
        "nhr.steps",
        "nhr.store",
        "nhr.store.blobs",
        "nhr.store.shards",
        "nhr.store.files",
        "nhr.lock",
        "nhr.images",
        "nhr.colours",
        "nhr.errors",
    }


class _Truth:
    """A world whose truth is the instruction: "good" edits are correct."""

    def triplet(self, source, instruction, edited):
        from nhr.backends.synthetic.truth import TripletTruth

        ok = instruction.startswith("good")
        return TripletTruth(ok, "ok" if ok else "wrong", 5.0 if ok else 1.0, 4.0)

    def source(self, image):
        from nhr.backends.synthetic.truth import SourceTruth

        return SourceTruth(True, ())


def test_mined_correct_share_counts_only_mined_triplets(tmp_path):
    """Inverted and composed triplets carry their parent's candidate id; they must not
    count as mined ones (here they would lift the share from 0.5 to 0.75)."""
    from PIL import Image

    from nhr.evaluate.truth import judge_vs_truth
    from nhr.store import RunStore
    from nhr.tables import RunTables

    store = RunStore(tmp_path)
    img = store.blobs.put(Image.new("RGB", (8, 8)))
    cands = [
        CandidateRow(
            f"c{i}",
            "s0",
            "p0",
            f"p0-i{i}",
            text,
            "add",
            "flat",
            img,
            img,
            8,
            8,
            0,
            20,
            2.5,
            "e",
            0.0,
        )
        for i, text in enumerate(["good edit", "bad edit", "good too"])
    ]
    verdicts = [
        Verdict(c.candidate_id, True, "ok", 4.9, 4.9, "{}", "j", "v", None) for c in cands[:2]
    ]
    verdicts.append(Verdict("c2", False, "low_both", 3.0, 3.0, "{}", "j", "v", None))
    base = dict(
        origin="mined",
        source_image=img,
        edited_image=img,
        edit_type="add",
        style="flat",
        width=8,
        height=8,
        adherence=4.9,
        aesthetic=4.9,
        score=4.9,
        prompt_id="p0",
        prompt="p",
        source_id="s0",
        t2i_model="t",
        t2i_seed=0,
        t2i_steps=4,
        editor_model="e",
        edit_seed=0,
        edit_steps=20,
        edit_guidance=2.5,
        prompter_version="v",
        writer_version="v",
        judge_id="j",
        judge_prompt_version="v",
    )
    mined = [
        TripletRow(
            triplet_id=f"m-{c.candidate_id}",
            parents=(c.candidate_id,),
            instruction=c.instruction,
            candidate_id=c.candidate_id,
            **base,
        )
        for c in cands[:2]
    ]
    derived = [
        TripletRow(
            **{
                **base,
                "origin": origin,
                "triplet_id": f"{origin}-{i}",
                "parents": ("m-c0",),
                "instruction": "good inverse",
                "candidate_id": "c0",
            }
        )
        for i, origin in enumerate(["inverted", "composed"])
    ]
    store.tables.write_table("candidates", to_table(cands, CandidateRow), {})
    store.tables.write_table("validator", to_table(verdicts, Verdict), {})
    store.tables.write_table("mined", to_table(mined, TripletRow), {})
    store.tables.write_table("triplets", to_table(mined + derived, TripletRow), {})
    result = judge_vs_truth(RunTables(store), _Truth())
    assert result["mined_correct_share"] == 0.5
    assert (result["precision"], result["recall"]) == (0.5, 0.5)


def test_whole_table_steps_are_recorded_and_not_redone(tiny_chain, tmp_path):
    import shutil

    from nhr.pipeline import Pipeline

    run = tmp_path / "again"
    shutil.copytree(tiny_chain.store.root, run)
    pipe = Pipeline(run, tiny_chain.cfg, progress=False)
    shards = {t: [e.name for e in pipe.store.tables.entries(t)] for t in ("mined", "triplets")}
    dataset = (run / "dataset" / "README.md").stat().st_mtime_ns
    first = {s: pipe.store.read_stats(s) for s in ("mined", "triplets", "export")}
    assert all(st["input_fingerprint"] for st in first.values())
    assert first["triplets"]["image_hashes"]["computed"] > 0
    pipe.select()
    pipe.bootstrap.assemble()
    pipe.export(tiny_chain.store.root.name)  # the name is a setting of the export
    assert {t: [e.name for e in pipe.store.tables.entries(t)] for t in shards} == shards
    assert (run / "dataset" / "README.md").stat().st_mtime_ns == dataset
    # a removed output is made again, the same; dedup reuses every stored hash
    shutil.rmtree(run / "tables" / "triplets")
    (run / "stats" / "triplets.json").unlink()
    stats = pipe.bootstrap.assemble().stats
    assert stats["image_hashes"]["computed"] == 0 and stats["image_hashes"]["reused"] > 0
    assert stats["rows_out"] == first["triplets"]["rows_out"]
    assert sorted(pipe.tables.read("triplets").column("triplet_id").to_pylist()) == sorted(
        tiny_chain.tables.read("triplets").column("triplet_id").to_pylist()
    )
