"""Cross-dataset scoring: three local datasets of known quality ranked right; bad input."""

import datasets
import huggingface_hub.constants
import pytest

from nhr.evaluate import datasets as evd
from nhr.pipeline import Pipeline


@pytest.fixture(scope="module")
def contrast(tiny_chain, tmp_path_factory):
    """The tiny run's export beside its rejected candidates and shuffled triplets."""
    made = evd.build_contrast_datasets(tiny_chain.tables, tmp_path_factory.mktemp("contrast"), 40)
    return {"accepted": tiny_chain.store.root / "dataset", **made}


def test_three_local_datasets_rank_by_quality_and_rescoring_resumes(contrast, tmp_path):
    assert (contrast["rejected"] / "metadata.jsonl").is_file()  # an imagefolder
    assert list((contrast["shuffled"] / "data").glob("*.parquet"))  # a parquet folder
    specs = evd.parse_specs([f"{k}={v}" for k, v in contrast.items()])
    pipe = Pipeline.open(tmp_path / "eval", {"EVAL_SAMPLES": 40}, progress=False)
    table = evd.score_datasets(pipe.runner, pipe.backends.validator, pipe.cfg, specs)
    assert list(table["dataset"]) == ["accepted", "rejected", "shuffled"]
    best, mid, worst = table.to_dict("records")
    assert best["geometric_mean"] > mid["geometric_mean"] + 0.3
    assert mid["geometric_mean"] > worst["geometric_mean"] + 0.3
    assert best["pass_rate"] > 0.8 and mid["pass_rate"] == 0.0
    assert all(r["scored"] == r["samples"] > 0 for r in (best, mid, worst))
    again = evd.score_datasets(pipe.runner, pipe.backends.validator, pipe.cfg, specs)
    assert again.equals(table)
    assert pipe.store.read_stats(evd.SCORES_TABLE)["processed_rows"] == 0  # all resumed
    assert evd.records(table)[0]["paper_geometric_mean"] is None


def test_sample_is_fixed_by_seed(contrast, tmp_path):
    spec = evd.parse_specs([f"r={contrast['rejected']}"])[0]
    idx = [i for i, _ in evd.read_sample(spec, 5, seed=3)]
    assert idx == [i for i, _ in evd.read_sample(spec, 5, seed=3)]
    assert idx != [i for i, _ in evd.read_sample(spec, 5, seed=4)]
    assert len(idx) == 5 == len(set(idx))


def test_registry_names_and_column_mappings():
    omni, mine = evd.parse_specs(
        ["omniedit", "mine=/data/mine"], ["mine=src,prompt,dst", "omniedit=a,b,c"]
    )
    assert omni.location == "TIGER-Lab/OmniEdit-Filtered-1.2M" and omni.columns.source == "a"
    assert omni.paper[2] == 4.23
    assert mine.columns == evd.ColumnMap("src", "prompt", "dst")
    assert evd.KNOWN_DATASETS["ultraedit"].paper[2] == 2.92
    assert {"nhr-edit", "magicbrush", "hq-edit", "anyedit", "pico-banana-400k"} <= set(
        evd.KNOWN_DATASETS
    )


@pytest.mark.parametrize(
    ("entries", "columns", "needle"),
    [
        (["a=x", "a=y"], [], "names repeat"),
        (["a=x"], ["b=s,i,e"], "no EVAL_DATASETS entry"),
        (["a=x"], ["a=s,i"], "three columns"),
    ],
)
def test_bad_dataset_specs(entries, columns, needle):
    with pytest.raises(evd.DatasetError, match=needle):
        evd.parse_specs(entries, columns)


def test_missing_column_names_the_mapping_fix(contrast, tmp_path):
    spec = evd.parse_specs([f"s={contrast['shuffled']}"], ["s=source_image,caption,edited_image"])
    store = Pipeline.open(tmp_path / "eval", {}, progress=False).store
    with pytest.raises(evd.DatasetError) as err:
        evd.sample_dataset(spec[0], 5, 0, store.blobs, store)
    assert "no column(s) ['caption']" in str(err.value) and "EVAL_COLUMNS" in str(err.value)


def test_unreachable_hub_id_and_missing_path(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    spec = evd.parse_specs(["nobody-xyz/not-a-dataset"])[0]
    with pytest.raises(evd.DatasetError) as err:
        list(evd.read_sample(spec, 3, 0))
    assert "cannot be read from the Hugging Face hub" in str(err.value)
    assert "NAME=PATH" in str(err.value)
    spec = evd.parse_specs([f"gone={tmp_path / 'nowhere' / 'at_all'}"])[0]
    with pytest.raises(evd.DatasetError, match="neither a local path nor a hub id"):
        list(evd.read_sample(spec, 3, 0))
    (tmp_path / "empty").mkdir()
    spec = evd.parse_specs([f"e={tmp_path / 'empty'}"])[0]
    with pytest.raises(evd.DatasetError, match="no parquet files"):
        list(evd.read_sample(spec, 3, 0))
