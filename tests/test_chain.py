"""The whole chain in-process on the synthetic world (no papermill): contracts hold."""

import itertools
import json

import datasets
import numpy as np

from nhr.summary import build_summary
from tests.conftest import run_chain


def test_every_candidate_gets_a_verdict_and_drops_have_reasons(tiny_chain):
    pipe = tiny_chain
    candidates = {c.candidate_id for c in pipe.rows("candidates")}
    assert candidates == {v.subject_id for v in pipe.rows("prefilter")}
    survivors = {c.candidate_id for c in pipe.survivors("prefilter")}
    assert survivors == {v.subject_id for v in pipe.rows("lowlevel")}
    assert {c.candidate_id for c in pipe.survivors("lowlevel")} == {
        v.subject_id for v in pipe.rows("validator")
    }
    for table in ("plausibility", "prefilter", "lowlevel", "validator"):
        stats = pipe.store.read_stats(table)
        failed = sum(not v.passed for v in pipe.rows(table))
        assert sum(stats["drops_by_reason"].values()) == failed
        assert all(v.reason != "ok" for v in pipe.rows(table) if not v.passed)


def test_most_candidates_fail_and_the_funnel_only_shrinks(tiny_chain):
    summary = build_summary(tiny_chain.tables, tiny_chain.cfg, tiny_chain.backends.truth)
    rows = [r["rows"] for r in summary["funnel"]]
    names = [r["stage"] for r in summary["funnel"]]
    assert names[:4] == ["prompts", "T2I images", "after plausibility gate", "edits generated"]
    mined = names.index("after argmax selection")
    for a, b in itertools.pairwise(rows[3 : mined + 1]):
        assert b <= a
    assert rows[names.index("after inversion")] > rows[mined]
    assert rows[names.index("after composition")] > rows[names.index("after backward consistency")]
    assert rows[names.index("after hard validator")] < 0.5 * rows[names.index("edits generated")]
    assert 0 < summary["triplets"] == rows[-1]


def test_edit_grid_is_n_k_m_and_sources_have_varied_sizes(tiny_chain):
    pipe = tiny_chain
    gated = len(pipe.passed_ids("plausibility"))
    assert len(pipe.rows("candidates")) == gated * 4 * 3
    sizes = {(s.width, s.height) for s in pipe.rows("sources")}
    assert len(sizes) > 5
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)


def test_triplets_carry_provenance_and_images_match(tiny_chain):
    pipe = tiny_chain
    for t in pipe.triplets():
        if t.origin == "mined":
            assert t.parents == (t.candidate_id,) and t.triplet_id == f"m-{t.candidate_id}"
        else:
            assert t.origin in ("inverted", "composed") and t.writer_version
        assert t.adherence >= 4.7 and t.aesthetic >= 4.7
        assert t.t2i_model and t.editor_model and t.judge_id and t.prompter_version
        src, edit = pipe.store.blobs.get(t.source_image), pipe.store.blobs.get(t.edited_image)
        assert src.size == edit.size == (t.width, t.height)


def test_export_loads_with_datasets(tiny_chain):
    pipe = tiny_chain
    ds = datasets.load_dataset(str(pipe.store.root / "dataset"), split="train")
    assert ds.num_rows == len(pipe.triplets())
    assert isinstance(ds.features["source_image"], datasets.Image)
    row = ds[0]
    trip = {t.triplet_id: t for t in pipe.triplets()}[row["triplet_id"]]
    assert np.array_equal(
        np.asarray(row["edited_image"].convert("RGB")),
        np.asarray(pipe.store.blobs.get(trip.edited_image)),
    )
    card = (pipe.store.root / "dataset" / "README.md").read_text()
    assert f"**Triplets:** {ds.num_rows}" in card and "| after hard validator |" in card


def test_judge_vs_truth_is_measured(tiny_chain):
    j = build_summary(tiny_chain.tables, tiny_chain.cfg, tiny_chain.backends.truth)[
        "judge_vs_truth"
    ]
    assert j["scored"] > 0 and 0 <= j["precision"] <= 1 and -1 <= j["spearman"] <= 1
    json.dumps(j)


def _untimed(record) -> dict:
    return {k: v for k, v in record.to_row().items() if k != "seconds"}


def test_the_same_seed_gives_the_same_run(tiny_chain, tmp_path):
    other = run_chain(tmp_path / "again")
    for table in ("sources", "candidates", "validator", "mined"):
        a = [_untimed(r) for r in tiny_chain.rows(table)]
        b = [_untimed(r) for r in other.rows(table)]
        key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
        assert sorted(a, key=key) == sorted(b, key=key), table


def test_an_empty_export_still_loads(tmp_path):
    from nhr.stages.export import export_dataset, load_export, read_card
    from nhr.store import RunStore

    store = RunStore(tmp_path)
    export_dataset([], store.blobs, tmp_path / "dataset", "# empty\n")
    assert load_export(tmp_path / "dataset").num_rows == 0
    assert load_export(tmp_path / "dataset", "multiturn").num_rows == 0
    infos = read_card(tmp_path / "dataset")["dataset_info"]
    assert [i["splits"][0]["num_examples"] for i in infos] == [0, 0, 0]
    assert load_export(tmp_path / "dataset", "preference").num_rows == 0


def test_multiturn_chains_follow_their_triplets(tiny_chain):
    from nhr.stages.export import load_export

    chains = load_export(tiny_chain.store.root / "dataset", "multiturn")
    by_id = {t.triplet_id: t for t in tiny_chain.triplets()}
    assert chains.num_rows == sum(t.origin == "composed" for t in by_id.values()) > 0
    for row in chains:
        first, second = (by_id[i] for i in row["triplet_ids"])
        assert second.parents[0] == first.triplet_id
        assert row["instructions"] == [first.instruction, second.instruction]
        assert row["images"][0].size == (first.width, first.height)


def test_preference_pairs_pair_a_chosen_edit_with_a_true_reject(tiny_chain):
    from nhr.stages.export import load_export

    pipe = tiny_chain
    prefs = load_export(pipe.store.root / "dataset", "preference")
    assert prefs.num_rows > 0
    candidates = {c.candidate_id: c for c in pipe.rows("candidates")}
    triplets = {t.triplet_id: t for t in pipe.triplets()}
    passed = pipe.passed_ids("validator")
    for row in prefs:
        chosen, rejected = triplets[row["triplet_id"]], candidates[row["rejected_candidate_id"]]
        assert chosen.origin == "mined" and rejected.candidate_id not in passed
        assert (rejected.source_id, rejected.instruction) == (chosen.source_id, chosen.instruction)
        assert row["rejected_stage"] in ("prefilter", "lowlevel", "validator")
        assert row["rejected_reason"] != "ok"
    assert len(set(prefs["triplet_id"])) == prefs.num_rows  # one per group by default


def test_the_synthetic_worlds_knobs_are_config_and_provenance(tiny_chain, tmp_path):
    noisy = run_chain(tmp_path / "noisy", {"SYNTHETIC_JUDGE_NOISE": 3.0})
    assert {v.judge_id for v in noisy.rows("validator")} == {"synthetic-judge-v1-noise3"}
    assert {v.judge_id for v in tiny_chain.rows("validator")} == {"synthetic-judge-v1"}
    quiet = build_summary(tiny_chain.tables, tiny_chain.cfg, tiny_chain.backends.truth)
    loud = build_summary(noisy.tables, noisy.cfg, noisy.backends.truth)
    assert loud["judge_vs_truth"]["recall"] < quiet["judge_vs_truth"]["recall"]
