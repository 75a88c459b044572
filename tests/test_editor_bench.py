"""The editor benchmark: sets, editor and judge specs, runner resume, results, layout;
the synthetic editor's skill and pixel reading; the export's test split."""

import json
from pathlib import Path

import numpy as np
import pytest
from fakes.model_server import FakeModelServer
from fakes.remote import FAST, use_fake
from PIL import Image

from nhr.backends.synthetic import SyntheticWorld
from nhr.backends.synthetic.editor import SyntheticEditor, skilled_probabilities
from nhr.backends.synthetic.judge import SyntheticJudge
from nhr.backends.synthetic.photo_folder import write_photo_folder
from nhr.backends.synthetic.truth import SyntheticTruth
from nhr.errors import ConfigError
from nhr.evaluate import bench_report
from nhr.evaluate.bench_sets import RawItem, stratified
from nhr.evaluate.datasets import DatasetError
from nhr.evaluate.editor_bench import parse_editor, run_bench
from nhr.pipeline import Pipeline
from nhr.records import TripletRow, to_table
from nhr.stages.export import export_dataset, load_export, read_card

SMALL = {"LONG_SIDE_MIN": 96, "LONG_SIDE_MAX": 128, "BATCH_SIZE": 4, "WORKERS": 1}


def _world_pictures(tmp_path: Path, n: int) -> tuple[list[Image.Image], list[str]]:
    """n world pictures from another world (unknown to a bench run's truth) and one
    instruction each, written for what the picture shows."""
    from nhr.backends.base import CaptionRequest

    world = SyntheticWorld(tmp_path / "other-truth")
    folder = write_photo_folder(world, tmp_path / "pictures", n, 3, (96, 128))
    images = [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.png"))]
    caps = world.captioner.caption(images)
    sets = world.caption_writer.instructions(
        [CaptionRequest(f"p{i}", i, 1, c.text) for i, c in enumerate(caps)]
    )
    return images, [s.instructions[0].text for s in sets]


def test_skill_knob_fails_as_often_as_it_says_and_default_is_todays_editor(tmp_path):
    p = skilled_probabilities(0.7, 28, 2.5)
    assert p["correct"] == pytest.approx(0.7) and sum(p.values()) == pytest.approx(1.0)
    world = SyntheticWorld(tmp_path / "truth")
    images, texts = _world_pictures(tmp_path, 3)
    assert SyntheticEditor(world.truth).model_id == "synthetic-editor-v1"
    assert SyntheticEditor(world.truth, skill=0.5).model_id == "synthetic-editor-v1-skill0.5"
    with pytest.raises(ValueError, match="skill"):
        SyntheticEditor(world.truth, skill=1.5)
    # a picture unknown to this truth store is read from its pixels and recorded
    fresh = SyntheticTruth(tmp_path / "fresh")
    editor = SyntheticEditor(fresh, skill=1.0)
    out = editor.edit(images[:1], texts[:1], [1], [28], 2.5)[0]
    assert fresh.has(images[0]) and out.size == images[0].size
    known = SyntheticTruth(tmp_path / "other-truth").layout(images[0])
    seen = fresh.layout(images[0])
    assert sorted(o.ref for o in seen.objects) == sorted(
        o.ref for o in known.objects if o.clean and 0.05 < o.x < 0.95 and 0.05 < o.y < 0.95
    )
    assert fresh.triplet(images[0], texts[0], out).correct  # skill 1: the edit is right
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="pictures of the synthetic world"):
        editor.edit([noise], ["add a red circle"], [0], [28], 2.5)


def test_synthetic_viescore_judge_answers_sc_pq_and_o(tmp_path):
    from nhr.backends.synthetic.judge import SyntheticVIEScoreJudge

    images, texts = _world_pictures(tmp_path, 2)
    judge = SyntheticVIEScoreJudge(noise=0.0)
    (same,) = judge.score(images[:1], images[:1], texts[:1])  # nothing done: SC 0
    assert same.details["sc"] == 0 and same.details["pq"] == 10 and same.details["overall"] == 0
    editor = SyntheticEditor(SyntheticTruth(tmp_path / "t"), skill=1.0)
    done = judge.score(images[:1], editor.edit(images[:1], texts[:1], [0], [28], 2.5), texts[:1])
    d = done[0].details
    assert d["sc"] == min(d["edit_success"], d["over_editing"]) and d["sc"] >= 8
    assert d["overall"] == pytest.approx((d["sc"] * d["pq"]) ** 0.5, abs=1e-3)
    assert done[0].adherence == pytest.approx(1 + 0.4 * d["sc"])


def test_editor_specs_parse_and_refuse_with_the_fix():
    s = parse_editor(
        "flux-kontext:model=m/x,steps=28,guidance=2.5,label=kontext+lora=/l.safetensors"
    )
    assert (s.name, s.model, s.steps, s.guidance, s.lora, s.editor_id) == (
        "flux-kontext",
        "m/x",
        28,
        2.5,
        "/l.safetensors",
        "kontext",
    )
    assert parse_editor("synthetic:skill=0.4").skill == 0.4
    for bad in ("nope:skill=1", "synthetic:skill=2", "synthetic:colour=red", "flux-kontext+lora"):
        with pytest.raises(ConfigError):
            parse_editor(bad)


def test_max_items_draws_a_seeded_sample_stratified_by_task_type():
    items = [
        RawItem(f"{t}{i}", t, "en", "x", None)
        for t, n in (("a", 60), ("b", 30), ("c", 10))
        for i in range(n)
    ]
    one, two = stratified(items, 20, 7), stratified(items, 20, 7)
    assert [i.key for i in one] == [i.key for i in two] != [i.key for i in stratified(items, 20, 8)]
    counts = {t: sum(i.task_type == t for i in one) for t in "abc"}
    assert counts == {"a": 12, "b": 6, "c": 2}
    assert {i.task_type for i in stratified(items, 3, 0)} == {"a", "b", "c"}


def test_export_test_split_is_by_source_and_keeps_every_row(tmp_path):
    from nhr.store import RunStore

    store = RunStore(tmp_path / "run")
    img = store.blobs.put(Image.new("RGB", (16, 16), (9, 9, 9)))
    rows = []
    for s in range(30):
        for origin in ("mined", "inverse"):
            rows.append(
                TripletRow(
                    f"{origin}-{s}",
                    origin,
                    (),
                    img,
                    img,
                    f"do {s}",
                    "add",
                    "flat",
                    16,
                    16,
                    5.0,
                    5.0,
                    5.0,
                    f"p{s}",
                    "prompt",
                    f"src{s}",
                    f"c{s}",
                    "t2i",
                    0,
                    1,
                    "ed",
                    0,
                    1,
                    2.5,
                    "v",
                    "v",
                    "j",
                    "jv",
                )
            )
    table = to_table(rows, TripletRow)
    export_dataset([table], store.blobs, tmp_path / "ds", "# x\n", test_share=0.3)
    train, test = (load_export(tmp_path / "ds", "default", s) for s in ("train", "test"))
    assert train.num_rows + test.num_rows == 60 and 0 < test.num_rows < 60
    assert not set(train["source_id"]) & set(test["source_id"])
    splits = read_card(tmp_path / "ds")["dataset_info"][0]["splits"]
    assert {s["name"]: s["num_examples"] for s in splits} == {
        "train": train.num_rows,
        "test": test.num_rows,
    }
    export_dataset([table], store.blobs, tmp_path / "one", "# x\n")  # share 0: one split
    assert [s["name"] for s in read_card(tmp_path / "one")["dataset_info"][0]["splits"]] == [
        "train"
    ]


def _gedit_parquet(tmp_path: Path) -> Path:
    """A GEdit-Bench-shaped parquet (its columns, Image features as the hub writes
    them) of world pictures: two task types, two languages, an Intersection_exist mix."""
    import datasets

    images, texts = _world_pictures(tmp_path, 6)
    rows = {
        c: []
        for c in (
            "task_type",
            "key",
            "instruction",
            "instruction_language",
            "input_image",
            "input_image_raw",
            "Intersection_exist",
        )
    }
    for i, (im, text) in enumerate(zip(images, texts, strict=True)):
        for lang in ("en", "cn"):
            rows["task_type"].append("color_alter" if i % 2 else "subject-add")
            rows["key"].append(f"k{i:03d}")
            rows["instruction"].append(text if lang == "en" else "把它改一下")
            rows["instruction_language"].append(lang)
            rows["input_image"].append(im)
            rows["input_image_raw"].append(im)
            rows["Intersection_exist"].append(i < 4)
    feats = datasets.Features(
        {
            "task_type": datasets.Value("string"),
            "key": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "instruction_language": datasets.Value("string"),
            "input_image": datasets.Image(),
            "input_image_raw": datasets.Image(),
            "Intersection_exist": datasets.Value("bool"),
        }
    )
    path = tmp_path / "gedit" / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    return path.parent.parent


def test_gedit_set_runs_editors_and_writes_gedits_layout(tmp_path):
    folder = _gedit_parquet(tmp_path)
    params = {
        **SMALL,
        "BENCH_SETS": [f"gedit={folder}"],
        "BENCH_EDITORS": ["synthetic:skill=0.2", "synthetic:skill=1.0,label=perfect"],
        "BENCH_SUBSET": "intersection",
    }
    pipe = Pipeline.open(tmp_path / "bench", params, progress=False)
    run = run_bench(pipe)
    data = bench_report.write_bench(run, pipe, pipe.backends.truth)
    files = sorted(
        p.relative_to(tmp_path / "bench" / "bench")
        for p in (tmp_path / "bench" / "bench").rglob("*.png")
    )
    expected = sorted(
        Path("gedit") / m / "fullset" / t / "en" / f"k{i:03d}.png"
        for m in ("synthetic_skill_0.2", "perfect")
        for i, t in enumerate(["subject-add", "color_alter"] * 2)
    )
    assert files == expected  # en only (BENCH_LANGUAGES), Intersection_exist only
    res = {r["editor_id"]: r for r in data["results"]}
    assert set(res) == {"synthetic:skill=0.2", "perfect"}
    for r in res.values():
        assert r["set"] == "gedit" and r["benchmark"] == "gedit" and r["items"] == 4
        assert set(r["by_task"]) == {"subject-add", "color_alter"}
        assert r["judge_id"] == "synthetic-viescore-v1" and r["scale"] == "viescore-0-10"
        assert r["truth_overall"] is not None  # the pictures were read into this world's truth
    assert res["perfect"]["truth_correct"] == 1.0
    assert data["paired"][0]["items"] == 4


def test_killed_benchmark_resumes_to_the_same_scores_and_a_rerun_calls_no_judge(
    tmp_path, monkeypatch
):
    from nhr.evaluate import editor_bench

    with FakeModelServer(judge=SyntheticJudge()) as srv:
        use_fake(monkeypatch, srv)
        params = {
            **SMALL,
            **FAST,
            "SHARD_ROWS": 4,
            "BENCH_MAX_ITEMS": 8,
            "BENCH_EDITORS": ["synthetic:skill=0.3", "synthetic:skill=0.9"],
            "BENCH_JUDGES": ["gemini"],
        }
        whole = Pipeline.open(tmp_path / "whole", params, progress=False)
        first = run_bench(whole)
        expected = bench_report.write_bench(first, whole)["results"]
        distinct = {(e.source_image, e.edited_image, e.instruction) for e in first.edits}
        assert len(first.edits) == 16 and len(distinct) <= srv.count <= 16  # one ask per edit

        real = editor_bench.BenchJudgeStage.process_batch
        done = []

        def dies(self, rows):
            if len(done) == 2:
                raise KeyboardInterrupt("killed")
            done.append(1)
            return real(self, rows)

        monkeypatch.setattr(editor_bench.BenchJudgeStage, "process_batch", dies)
        pipe = Pipeline.open(tmp_path / "killed", params, progress=False)
        with pytest.raises(KeyboardInterrupt):
            run_bench(pipe)
        monkeypatch.setattr(editor_bench.BenchJudgeStage, "process_batch", real)
        kept = pipe.store.tables.read(editor_bench.judge_table("gemini")).num_rows
        assert 0 < kept < 16  # the batches judged before the kill are committed
        pipe = Pipeline.open(tmp_path / "killed", params, progress=False)
        resumed = bench_report.write_bench(run_bench(pipe), pipe)["results"]
        assert resumed == expected
        after = srv.count
        pipe = Pipeline.open(tmp_path / "killed", params, progress=False)
        again = bench_report.write_bench(run_bench(pipe), pipe)["results"]
        assert again == expected and srv.count == after  # a rerun asks the judge nothing
    assert all(
        r["judge_id"].startswith("gemini:") and r["scale"] == "validator-1-5" for r in expected
    )
    assert json.loads((tmp_path / "killed" / "bench.json").read_text())["results"] == expected


def test_remote_viescore_and_imgedit_judges_score_a_benchmark(tmp_path, monkeypatch):
    with FakeModelServer() as srv:
        use_fake(monkeypatch, srv)
        params = {
            **SMALL,
            **FAST,
            "OPENAI_BASE_URL": srv.openai_url,
            "BENCH_MAX_ITEMS": 4,
            "BENCH_EDITORS": ["synthetic:skill=0.5"],
            "BENCH_JUDGES": ["openai-viescore:EditScore/EditScore-7B", "openai-imgedit:judge"],
        }
        pipe = Pipeline.open(tmp_path / "b", params, progress=False)
        data = bench_report.write_bench(run_bench(pipe), pipe)
    by_style = {r["judge_id"].rsplit(":", 1)[1]: r for r in data["results"]}
    vie, img = by_style["viescore"], by_style["imgedit"]
    assert vie["scale"] == "viescore-0-10"
    assert vie["scored"] == 4 and 0 <= vie["sc"] <= 10 and 0 <= vie["pq"] <= 10
    assert vie["judge_model"] == "EditScore/EditScore-7B" and vie["prompt_version"]
    assert img["scale"] == "validator-1-5" and img["scored"] == 4
    assert set(img["criteria"]) >= {"compliance", "naturalness", "physical"}
    assert img["overall"] == pytest.approx(
        np.mean([img["criteria"][c] for c in ("compliance", "naturalness", "physical")]), abs=1e-3
    )


def test_tiny_kontext_editors_run_the_notebook_through_nhr_run(tmp_path):
    """The real diffusers path (tiny random FLUX Kontext, loaded by from_pretrained)
    through notebook 12 under `nhr run`, judged by the plumbing judge."""
    import yaml
    from conftest import ROOT, nhr_cli

    from nhr.backends.tiny_diffusers import build_tiny

    model = tmp_path / "flux-kontext"
    build_tiny("flux-kontext", 0).save_pretrained(model)
    config = {
        "name": "bench-tiny",
        "notebooks": [str(ROOT / "notebooks" / "12_editor_bench.ipynb")],
        "params": {
            "BENCH_SETS": ["synthetic"],
            "BENCH_EDITORS": [
                f"flux-kontext:model={model},steps=2,guidance=3.5,seed=7,label=kontext",
                "synthetic:skill=0.5",
            ],
            "BENCH_JUDGES": ["plumbing-accept-all"],
            "BENCH_MAX_ITEMS": 2,
            "LONG_SIDE_MIN": 64,
            "LONG_SIDE_MAX": 96,
            "EDIT_MAX_AREA": 4096,
            "DIFFUSERS_DEVICE": "cpu",
            "DIFFUSERS_DTYPE": "float32",
            "BATCH_SIZE": 4,
        },
    }
    path = tmp_path / "bench-tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    proc = nhr_cli("run", str(path), "--run-dir", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((run_dir / "bench.json").read_text())
    res = {r["editor_id"]: r for r in data["results"]}
    assert set(res) == {"kontext", "synthetic:skill=0.5"}
    assert all(r["items"] == 2 and r["scored"] == 2 for r in res.values())
    kontext = res["kontext"]
    assert str(model) in kontext["model_id"] and (kontext["steps"], kontext["guidance"]) == (2, 3.5)
    assert kontext["judge_id"] == data["judges"][0]["judge_id"] and kontext["prompt_version"]
    assert {e["editor_id"]: e["seed"] for e in data["editors"]}["kontext"] == 7
    assert len(list((run_dir / "bench" / "synthetic" / "kontext").rglob("*.png"))) == 2
    assert (run_dir / "plots" / "bench_grid_synthetic.png").is_file()


def test_imgedit_basic_kris_and_mapped_datasets_load_as_items(tmp_path):
    from nhr.evaluate.bench_sets import load_set, parse_sets
    from nhr.evaluate.datasets import write_parquet_dataset
    from nhr.store import RunStore

    folder = tmp_path / "imgedit"
    (folder / "singleturn" / "animal").mkdir(parents=True)
    meta = {}
    for i, kind in enumerate(("add", "remove", "add")):
        Image.new("RGB", (40, 32), (i * 50, 90, 9)).save(
            folder / "singleturn" / "animal" / f"{i}.jpg"
        )
        meta[f"{i}"] = {"id": f"animal/{i}.jpg", "prompt": f"{kind} a cat", "edit_type": kind}
    (folder / "basic_edit.json").write_text(json.dumps(meta))
    pairs = [
        (Image.new("RGB", (32, 32), (i, 0, 0)), f"make it {i}", Image.new("RGB", (32, 32)))
        for i in range(5)
    ]
    mapped = write_parquet_dataset(tmp_path / "mine", pairs)
    sets = parse_sets([f"imgedit-basic={folder}", f"mine={mapped}"])
    assert [(s.name, s.kind, s.standard) for s in sets] == [
        ("imgedit-basic", "imgedit-basic", "imgedit"),
        ("mine", "dataset", "nhr"),
    ]
    store = RunStore(tmp_path / "run")
    items = load_set(sets[0], store, store.blobs, 0, 0)
    assert [(i.item_key, i.task_type, i.instruction) for i in items] == [
        ("0", "add", "add a cat"),
        ("1", "remove", "remove a cat"),
        ("2", "add", "add a cat"),
    ]
    assert store.blobs.get(items[1].source_image).size == (40, 32)
    assert load_set(sets[0], store, store.blobs, 0, 0) == items  # read back, not again
    two = load_set(sets[1], store, store.blobs, 2, 0)
    assert len(two) == 2 and all(i.instruction.startswith("make it") for i in two)
    kris = tmp_path / "KRIS_Bench"  # <category>/annotation.json: id -> ori_img, ins_en
    for cat in ("count_change", "color_change"):
        (kris / cat).mkdir(parents=True)
        Image.new("RGB", (36, 36), (5, 5, 200)).save(kris / cat / "1.jpg")
        ann = {"1": {"ori_img": "1.jpg", "ins_en": f"do the {cat}", "explain_en": "why"}}
        (kris / cat / "annotation.json").write_text(json.dumps(ann))
    k = load_set(parse_sets([f"kris={kris}"])[0], store, store.blobs, 0, 0)
    assert sorted((i.item_key, i.task_type, i.instruction) for i in k) == [
        ("color_change/1", "color_change", "do the color_change"),
        ("count_change/1", "count_change", "do the count_change"),
    ]
    with pytest.raises(DatasetError, match=r"basic_edit\.json does not exist"):
        load_set(parse_sets([f"imgedit-basic={tmp_path}"])[0], store, store.blobs, 0, 0)
