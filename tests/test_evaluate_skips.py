"""The evaluation path: bad images are skipped and counted, never abort; hub samples are
uniform."""

import json
import random

import datasets
import numpy as np
import pytest
from fakes.image_zoo import ZOO_LIMITS, write_zoo
from PIL import Image

from nhr.evaluate import datasets as evd
from nhr.pipeline import Pipeline
from nhr.summary import build_summary

PARAMS = {"VALIDATOR": "plumbing-accept-all", "EVAL_CONTRAST": False, "BATCH_SIZE": 500}


def _good(folder, n):
    names = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"good_{i}.png")
        names.append(f"good_{i}.png")
    return names


def test_five_thousand_samples_with_seven_percent_unreadable_finish(tmp_path):
    folder = tmp_path / "bad7"
    folder.mkdir()
    good = _good(folder, 24)
    cases = write_zoo(folder / "zoo")
    bad = [f"zoo/{c.file}" for c in cases.values() if c.expect != "ok"]
    rng = random.Random(0)
    rows, n_bad = [], 0
    for i in range(5000):
        broken = i % 100 < 7  # 7 % of the rows
        n_bad += broken
        src = bad[i % len(bad)] if broken else good[rng.randrange(len(good))]
        edit = good[rng.randrange(len(good))]
        rows.append({"source_image": src, "instruction": f"edit {i}", "edited_image": edit})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pipe = Pipeline.open(tmp_path / "run", {**PARAMS, "EVAL_SAMPLES": 5000}, progress=False)
    table = evd.score_datasets(
        pipe.runner, pipe.backends.validator, pipe.cfg, evd.parse_specs([f"bad7={folder}"])
    )
    row = table.iloc[0]
    assert row["skipped"] == n_bad == 350
    assert row["samples"] == row["scored"] == 5000 - n_bad
    by_reason = row["skipped_by_reason"]
    expected = {f"image_{c.expect}" for c in cases.values() if c.expect != "ok"}
    assert set(by_reason) == expected and sum(by_reason.values()) == 350
    summary = build_summary(pipe.tables, pipe.cfg, with_truth=False)
    assert summary["stages"]["eval_samples"]["drops_by_reason"] == by_reason
    # a rerun reads the stored sample back and still reports the skips
    again = evd.score_datasets(
        pipe.runner, pipe.backends.validator, pipe.cfg, evd.parse_specs([f"bad7={folder}"])
    )
    assert again.iloc[0]["skipped_by_reason"] == by_reason


def test_zoo_in_the_evaluation_path(tmp_path):
    """Each zoo file as a source image: kept (loaded right) or skipped with its reason."""
    folder = tmp_path / "zoo_ds"
    folder.mkdir()
    (good,) = _good(folder, 1)
    cases = write_zoo(folder / "zoo")
    names = list(cases)
    rows = [
        {"source_image": f"zoo/{cases[n].file}", "instruction": n, "edited_image": good}
        for n in names
    ]
    rows.append({"source_image": good, "instruction": "", "edited_image": good})
    rows.append({"source_image": None, "instruction": "no image", "edited_image": good})
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pipe = Pipeline.open(tmp_path / "run", {**PARAMS, "EVAL_SAMPLES": 100}, progress=False)
    spec = evd.parse_specs([f"zoo={folder}"])[0]
    samples = evd.sample_dataset(spec, 100, 0, pipe.store.blobs, pipe.store, ZOO_LIMITS)
    kept = {s.instruction: s for s in samples}
    for name, case in cases.items():
        if case.expect == "ok":
            assert case.check(pipe.store.blobs.get(kept[name].source_image)), name
        else:
            assert name not in kept, name
    skips = evd.sample_skips(pipe.store, "zoo")
    bad = [c.expect for c in cases.values() if c.expect != "ok"]
    assert skips.pop("no_instruction") == 1
    assert skips.pop("image_missing") == 1 + bad.count("missing")
    assert skips == {f"image_{r}": bad.count(r) for r in set(bad)}


def test_hub_sample_is_uniform_over_the_whole_stream(monkeypatch):
    """With the stream's length known (or counted), the drawn indices cover all of it:
    a 2n shuffle buffer would keep them in the first ~3n rows."""
    total, n = 20_000, 200

    def rows():
        for i in range(total):
            yield {"src": {"bytes": b"", "path": None}, "text": f"t{i}", "dst": None}

    stream = datasets.IterableDataset.from_generator(rows)
    monkeypatch.setattr(evd, "_hub_stream", lambda spec, columns=None: stream)
    monkeypatch.setattr(evd, "_hub_length", lambda spec: None)  # counted in a first pass
    spec = evd.DatasetSpec("hub", "owner/name", evd.ColumnMap("src", "text", "dst"))
    picked = [i for i, _ in evd.read_sample(spec, n, seed=5)]
    assert len(picked) == n == len(set(picked)) and picked == sorted(picked)
    assert picked == [i for i, _ in evd.read_sample(spec, n, seed=5)]  # fixed by the seed
    assert max(picked) > 0.9 * total and min(picked) < 0.1 * total
    assert abs(np.mean(picked) / total - 0.5) < 0.05  # uniform: mean near the middle
    assert sum(i > 3 * n for i in picked) > 0.9 * n
    monkeypatch.setattr(evd, "_hub_length", lambda spec: total)  # from the hub's metadata
    assert [i for i, _ in evd.read_sample(spec, n, seed=5)] == picked


def test_pick_rows_stops_after_the_last_index():
    seen = []

    def rows():
        for i in range(1000):
            seen.append(i)
            yield {"i": i}

    assert [i for i, _ in evd.pick_rows(rows(), [3, 10, 42])] == [3, 10, 42]
    assert max(seen) <= 43


@pytest.mark.parametrize("limit", [10])
def test_a_dataset_whose_every_image_is_refused_is_reported_not_raised(tmp_path, limit):
    folder = tmp_path / "tiny"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    rows = [{"source_image": "a.png", "instruction": "x", "edited_image": "a.png"}] * limit
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pipe = Pipeline.open(tmp_path / "run", {**PARAMS, "EVAL_SAMPLES": 50}, progress=False)
    table = evd.score_datasets(
        pipe.runner, pipe.backends.validator, pipe.cfg, evd.parse_specs([f"tiny={folder}"])
    )
    assert table.iloc[0]["skipped_by_reason"] == {"image_too_small": limit}
    assert table.iloc[0]["samples"] == 0
