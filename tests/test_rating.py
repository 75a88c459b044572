"""Ratings, agreement, tuning data and judges side by side, on a tiny synthetic run with
people simulated from the world's truth (rater noise), and the rating notebook."""

import json
import math

import papermill
import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import FAST, use_fake

from nhr.backends.api_roles import parse_scores
from nhr.backends.judge_ensemble import EnsembleJudge
from nhr.backends.synthetic.judge import SyntheticJudge
from nhr.config import PipelineConfig
from nhr.evaluate import calibration as cal
from nhr.evaluate import rating, rescoring, tuning
from nhr.evaluate.agreement import krippendorff_alpha
from nhr.evaluate.calibration import RatingsError
from nhr.stages.validator import ValidatorStage
from tests.conftest import ROOT

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
# coders, twelve units, missing values; α interval 0.849, ordinal 0.815 (nominal 0.743)
CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_krippendorff_alpha_matches_the_published_example():
    units = [[x for x in unit if x is not None] for unit in zip(*CODERS, strict=True)]
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha([[1, 1], [3, 3], [5, 5]]) == 1.0
    assert krippendorff_alpha([[2, 2], [2, 2]]) is None  # no variation: undefined
    assert krippendorff_alpha([[1], [2]]) is None  # nothing pairable


@pytest.fixture(scope="module")
def sample(tiny_chain):
    return rating.sample_items(tiny_chain, 30, seed=0, strata=5, threshold=4.7)


def test_sample_is_seeded_stratified_and_holds_failed_items(tiny_chain, sample):
    assert len(sample) == len({i.item_id for i in sample}) == 30
    assert {i.passed for i in sample} == {True, False}
    passed = [i for i in sample if i.passed]
    assert all(i.stratum == 4 for i in passed) and all(
        i.stratum < 4 for i in sample if not i.passed
    )
    strata = {i.stratum for i in sample}
    assert len(strata) >= 3
    again = rating.sample_items(tiny_chain, 30, seed=0, strata=5, threshold=4.7)
    other = rating.sample_items(tiny_chain, 30, seed=1, strata=5, threshold=4.7)
    assert again == sample and [i.item_id for i in other] != [i.item_id for i in sample]
    # an equal share per stratum, capped by what a stratum has
    assert rating.allocate([2, 10, 10], 12) == [2, 5, 5]
    assert rating.allocate([1, 1], 10) == [1, 1]


def test_sessions_resume_and_take_several_raters(tiny_chain, sample, tmp_path):
    ratings_file = tmp_path / "ratings.csv"
    items = rating.prepare_items(tiny_chain, ratings_file, 30, 0, 5, 4.7)
    assert items == sample and rating.items_path(ratings_file).is_file()
    ann = rating.RatingSession(items, ratings_file, "ann")
    first = ann.current()
    ann.rate(first.item_id, 4, 5)
    ann.skip(ann.current().item_id)
    ann.rate(ann.current().item_id, 2, 3)
    # a new session (a reopened notebook) resumes after what ann did
    again = rating.RatingSession(
        rating.read_items(rating.items_path(ratings_file)), ratings_file, "ann"
    )
    assert again.progress() == {"rated": 2, "skipped": 1, "left": 27, "total": 30}
    assert again.current() == items[3]
    bob = rating.RatingSession(items, ratings_file, "bob")
    assert bob.current() == items[0]
    bob.rate(items[0].item_id, 5, 5)
    ann.rate(first.item_id, 3, 5)  # a change of mind replaces the rating
    got = cal.read_ratings(ratings_file)
    assert sorted((r.item_id, r.rater, r.adherence) for r in got) == sorted(
        [(first.item_id, "ann", 3.0), (items[2].item_id, "ann", 2.0), (first.item_id, "bob", 5.0)]
    )
    with pytest.raises(RatingsError):
        ann.rate(first.item_id, 6, 5)
    with pytest.raises(RatingsError):
        ann.rate("not-an-item", 3, 3)
    with pytest.raises(RatingsError):
        rating.RatingSession(items, ratings_file, "a,b")
    summary = rating.summary(ratings_file, items)
    assert summary["per_rater"] == {"ann": 2, "bob": 1} and summary["items_with_two_or_more"] == 1


def test_widget_binds_the_session(tiny_chain, sample, tmp_path):
    from nhr.evaluate.rating_ui import RatingApp

    ratings_file = tmp_path / "ratings.csv"
    app = RatingApp(rating.RatingSession(sample[:3], ratings_file, "ann"), tiny_chain.store.root)
    assert app.item == sample[0] and app.source.value[:4] == b"\x89PNG"
    app.save.click()  # nothing picked: nothing written
    assert not ratings_file.exists() and "pick both" in app.status.value
    app.adherence.value, app.aesthetic.value = 4, 2
    app.save.click()
    assert [(r.item_id, r.adherence, r.aesthetic) for r in cal.read_ratings(ratings_file)] == [
        (sample[0].item_id, 4.0, 2.0)
    ]
    assert app.item == sample[1] and app.adherence.value is None
    app.skip.click()
    app.rater.value = "bob"  # another person takes over: starts from the first item
    assert app.item == sample[0]
    app.rater.value = "ann"
    app.adherence.value, app.aesthetic.value = 5, 5
    app.save.click()
    assert app.item is None and "done" in app.status.value


def test_rating_files_share_one_mode(tiny_chain, tmp_path):
    import os
    import stat

    ratings_file = tmp_path / "rating" / "ratings.csv"
    old = os.umask(0o002)  # a group of raters on a shared machine
    try:
        items = rating.prepare_items(tiny_chain, ratings_file, 4, 0, 5, 4.7)
        session = rating.RatingSession(items, ratings_file, "ann")
        session.rate(items[0].item_id, 3, 4)
        session.skip(items[1].item_id)
        session.rate(items[2].item_id, 5, 5)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in ratings_file.parent.iterdir()}
    assert sorted(modes) == [
        "rating_items.jsonl", "ratings.csv", "ratings.csv.lock", "ratings.skips.jsonl"
    ]  # fmt: skip
    assert set(modes.values()) == {0o664}, modes
    assert session.progress() == {"rated": 2, "skipped": 1, "left": 1, "total": 4}


def test_widget_letterboxes_every_image_in_one_box(tiny_chain, sample, tmp_path):
    import io

    from PIL import Image

    from nhr.evaluate.rating_ui import BACKDROP, BOX, RatingApp, _png

    portrait = tmp_path / "portrait.png"
    Image.new("RGB", (50, 200), (255, 0, 0)).save(portrait)
    shown = Image.open(io.BytesIO(_png(portrait)))
    assert shown.size == (BOX, BOX)
    assert shown.getpixel((BOX // 2, BOX // 2)) == (255, 0, 0)
    assert shown.getpixel((5, BOX // 2)) == shown.getpixel((BOX - 5, BOX // 2)) == BACKDROP
    red = [x for x in range(BOX) if shown.getpixel((x, BOX // 2)) == (255, 0, 0)]
    assert abs(len(red) - BOX / 4) <= 2  # the aspect ratio kept, not stretched
    app = RatingApp(
        rating.RatingSession(sample[:2], tmp_path / "r.csv", "ann"), tiny_chain.store.root
    )
    for _ in range(3):  # two items, then the empty box once done
        for image in (app.source, app.edited):
            assert Image.open(io.BytesIO(image.value)).size == (BOX, BOX)
            assert image.layout.width == image.layout.height == f"{BOX}px"
        app.skip.click()


def test_simulated_raters_agree_less_with_more_noise(tiny_chain, sample):
    calm = rating.simulate_ratings(tiny_chain, sample, raters=3, noise=0.2, seed=0)
    noisy = rating.simulate_ratings(tiny_chain, sample, raters=3, noise=1.5, seed=0)
    assert len(calm) == 90 and all(r.adherence in (1, 2, 3, 4, 5) for r in calm)
    a, b = cal.inter_rater(calm), cal.inter_rater(noisy)
    assert a["raters"] == 3 and a["pairs"] == 3
    assert a["adherence_alpha_interval"] > b["adherence_alpha_interval"]
    assert a["adherence_alpha_ordinal"] > b["adherence_alpha_ordinal"]
    assert a["adherence_spearman"] > b["adherence_spearman"]
    result = cal.calibrate(cal.validator_scores(tiny_chain.tables), calm)
    assert result["inter_rater"]["adherence_alpha_interval"] == a["adherence_alpha_interval"]


def test_tuning_exports_follow_their_formats(tiny_chain, sample, tmp_path):
    ratings = rating.simulate_ratings(tiny_chain, sample, raters=2, noise=0.5, seed=0)
    examples = tuning.examples(tiny_chain, ratings)
    assert len(examples) == 30
    by_item = {}
    for r in ratings:
        by_item.setdefault(r.item_id, []).append(r.adherence)
    ex = examples[0]
    assert ex.adherence == round(sum(by_item[ex.item_id]) / 2, 1)
    gcs = tuning.write_vertex(
        tiny_chain, examples, tmp_path / "g", "gcs", "gs://b/imgs", 256, 0.2, 0
    )
    inline = tuning.write_vertex(tiny_chain, examples, tmp_path / "i", "inline", max_side=256)
    chat = tuning.write_chat(tiny_chain, examples, tmp_path / "c", 256, 0.2, 0)
    lines = [json.loads(x) for x in open(gcs["train"])] + [
        json.loads(x) for x in open(gcs["validation"])
    ]
    assert len(lines) == 30 and 0 < len(open(gcs["validation"]).readlines()) < 30
    for line in lines:
        tuning.check_vertex(line)
        user, model = line["contents"]
        uris = [p["fileData"]["fileUri"] for p in user["parts"] if "fileData" in p]
        assert len(uris) == 2 and all(u.startswith("gs://b/imgs/") for u in uris)
        for u in uris:
            assert (tmp_path / "g" / "images" / u.rsplit("/", 1)[1]).is_file()
        answer = parse_scores(json.loads(model["parts"][0]["text"]))  # the validator's parser
        assert 1 <= answer.adherence <= 5
        assert line["systemInstruction"]["parts"][0]["text"].startswith(
            "You are the hard validator"
        )
    for line in map(json.loads, open(inline["train"])):
        tuning.check_vertex(line)
        assert sum("inlineData" in p for p in line["contents"][0]["parts"]) == 2
    for name, check in (("trl", tuning.check_trl), ("llamafactory", tuning.check_llamafactory)):
        rows = [json.loads(x) for x in open(chat[f"{name}_train"])]
        for row in rows:
            check(row)
            assert all((tmp_path / "c" / p).is_file() for p in row["images"])
    info = json.loads((tmp_path / "c" / "dataset_info.json").read_text())
    assert info["nhr_judge_train"]["formatting"] == "sharegpt"
    assert info["nhr_judge_train"]["columns"] == {"messages": "messages", "images": "images"}


@pytest.mark.parametrize(
    ("check", "line"),
    [
        (tuning.check_vertex, {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}),
        (
            tuning.check_vertex,
            {
                "contents": [
                    {
                        "role": "user",
                        "parts": [{"fileData": {"mimeType": "image/png", "fileUri": "/local.png"}}],
                    },
                    {"role": "model", "parts": [{"text": "{}"}]},
                ]
            },
        ),
        (
            tuning.check_vertex,
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "x"}]},
                    {"role": "assistant", "parts": [{"text": "{}"}]},
                ]
            },
        ),
        (
            tuning.check_trl,
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "y"}]},
                ],
                "images": ["a.png", "b.png"],
            },
        ),
        (
            tuning.check_llamafactory,
            {
                "messages": [
                    {"role": "user", "content": "<image> x"},
                    {"role": "user", "content": "y"},
                ],
                "images": ["a.png"],
            },
        ),
    ],
)
def test_format_checks_refuse_broken_lines(check, line):
    with pytest.raises(tuning.TuningFormatError):
        check(line)


def test_judges_side_by_side_on_the_same_ratings(tiny_chain, sample, tmp_path):
    ratings = rating.simulate_ratings(tiny_chain, sample, raters=2, noise=0.5, seed=0)
    specs = ["validator", "synthetic:noise=0", "synthetic:noise=3"]
    rows = rescoring.side_by_side(tiny_chain, specs, ratings, tiny_chain.cfg, tmp_path)
    assert [r["judge_id"] for r in rows] == [
        "synthetic-judge-v1",
        "synthetic-judge-v1-noise0",
        "synthetic-judge-v1-noise3",
    ]
    keys = {"judge_id", "mae_adherence", "spearman_adherence", "precision", "recall"}
    assert all(keys | {"threshold_for_precision_0_9"} <= set(r) for r in rows)
    assert all(r["items"] == 30 for r in rows)
    assert rows[1]["mae_adherence"] < rows[2]["mae_adherence"]  # less noise, closer to people
    # the own validator's row equals calibrating its table's scores directly
    own = cal.calibrate(cal.validator_scores(tiny_chain.tables), ratings)
    assert rows[0]["mae_adherence"] == own["per_dimension"]["adherence"]["mae"]
    assert rows[0]["precision"] == own["at_threshold"]["precision"]
    # the needed threshold: precision >= 0.9 there and above (where anything passes)
    for r in rows:
        t = r["threshold_for_precision_0_9"]
        if t is not None:
            above = [
                c for c in r["vs_threshold"] if c["threshold"] >= t and c["precision"] is not None
            ]
            assert all(c["precision"] >= 0.9 for c in above)


def test_side_by_side_with_an_openai_style_judge(tiny_chain, sample, tmp_path, monkeypatch):
    ratings = rating.simulate_ratings(tiny_chain, sample[:8], raters=1, noise=0.5, seed=0)
    with FakeModelServer() as srv:
        use_fake(monkeypatch, srv)
        cfg = PipelineConfig.from_params({**FAST, "OPENAI_BASE_URL": srv.openai_url})
        specs = ["synthetic:noise=0.5", "openai-viescore", "openai-imgedit"]
        rows = rescoring.side_by_side(tiny_chain, specs, ratings, cfg, tmp_path)
        calls = srv.count
        assert calls == 24  # viescore: an SC and a PQ call per item; imgedit: one
        again = rescoring.side_by_side(tiny_chain, specs, ratings, cfg, tmp_path)
        assert srv.count == calls  # the request cache answers a rerun
    assert [r["judge_id"].rsplit(":", 1)[-1] for r in rows][1:] == ["viescore", "imgedit"]
    assert all(r["items"] == 8 and not math.isnan(r["mae_adherence"]) for r in rows)
    assert [r["mae_adherence"] for r in again] == [r["mae_adherence"] for r in rows]


def test_ensemble_validates_a_run(tiny_chain, sample):
    members = [SyntheticJudge(0.0), SyntheticJudge(2.0)]
    cands = {c.candidate_id: c for c in tiny_chain.rows("candidates")}
    rows = [cands[i.item_id] for i in sample]
    verdicts = {}
    for rule in ("combined", "all", "majority"):
        stage = ValidatorStage(EnsembleJudge(members, "mean", rule, 4.7), tiny_chain.store.blobs)
        verdicts[rule] = stage.process_batch(rows)
    solo = [
        m.score(
            [tiny_chain.store.blobs.get(r.source_image) for r in rows],
            [tiny_chain.store.blobs.get(r.image) for r in rows],
            [r.instruction for r in rows],
        )
        for m in members
    ]
    for i in range(len(rows)):
        both = all(min(s[i].adherence, s[i].aesthetic) >= 4.7 for s in solo)
        assert verdicts["all"][i].passed == (verdicts["combined"][i].passed and both)
        details = json.loads(verdicts["all"][i].details)
        assert [m["passed"] for m in details["members"]] == [
            min(s[i].adherence, s[i].aesthetic) >= 4.7 for s in solo
        ]
    vetoed = [v for v in verdicts["all"] if v.reason == "ensemble_vote"]
    assert all(not v.passed and v.error is None for v in vetoed)


@pytest.mark.notebook
def test_rating_notebook_records_ratings_and_tuning_data(tiny_chain, tmp_path):
    ratings_file = tmp_path / "ratings" / "ratings.csv"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "11_rate.ipynb"),
        str(tmp_path / "11.ipynb"),
        parameters={
            "RUN_DIR": str(ratings_file.parent),
            "EVAL_RUN_DIR": str(tiny_chain.store.root),
            "RATE_ITEMS": 10,
            "RATE_SIMULATED_RATERS": 2,
            "TUNE_IMAGES": "inline",
            "TUNE_VALIDATION_SHARE": 0.3,
            "API_IMAGE_MAX_SIDE": 128,
        },
        cwd=str(ROOT),
        progress_bar=False,
    )
    ratings = cal.read_ratings(ratings_file)
    assert len(ratings) == 20 and {r.rater for r in ratings} == {"sim-1", "sim-2"}
    items = rating.read_items(rating.items_path(ratings_file))
    assert {r.item_id for r in ratings} == {i.item_id for i in items} and len(items) == 10
    tune = ratings_file.parent / "tuning"
    lines = [
        json.loads(x)
        for name in ("vertex_train.jsonl", "vertex_validation.jsonl")
        for x in open(tune / name)
    ]
    assert len(lines) == 10
    for line in lines:
        tuning.check_vertex(line)
    for line in map(json.loads, open(tune / "trl_train.jsonl")):
        tuning.check_trl(line)
    # 09 reads the file: the validator against these raters, and their agreement
    result = cal.calibrate(cal.validator_scores(tiny_chain.tables), ratings)
    assert result["items"] == 10 and result["inter_rater"]["raters"] == 2
    assert result["inter_rater"]["adherence_alpha_ordinal"] is not None
