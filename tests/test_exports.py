"""Exports that load cleanly: the card (no warning from datasets), WebDataset shards,
`nhr push` up to the upload call; config paths and tiny models."""

import io
import json
import logging
import shutil
import warnings

import datasets
import pytest
from huggingface_hub import DatasetCard, HfApi

from nhr import cli
from nhr.config import RunConfig
from nhr.errors import ConfigError, RunFolderError
from nhr.push import push_dataset
from nhr.stages.export import export_dataset, read_card
from nhr.stages.export_webdataset import (
    TAR_MTIME,
    TarShard,
    metadata,
    sample_key,
    write_webdataset,
)


def _load_quietly(folder):
    """Load an export, returning (dataset, warnings and datasets log lines)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("datasets")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = datasets.load_dataset(str(folder), split="train")
    finally:
        logger.removeHandler(handler)
    return ds, [str(w.message) for w in caught] + buf.getvalue().splitlines()


def test_card_has_licence_provenance_and_loads_without_warning(tiny_chain, tmp_path):
    folder = tiny_chain.store.root / "dataset"
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "cc-by-4.0"
    assert card.data.annotations_creators == ["machine-generated"]
    nhr = card.data.to_dict()["nhr"]
    assert nhr["paper"] == "arXiv:2507.14119" and nhr["t2i_models"] == ["synthetic-t2i-v1"]
    assert sum(nhr["origins"].values()) == len(tiny_chain.triplets())
    info = {i["config_name"]: i for i in read_card(folder)["dataset_info"]}
    assert info["default"]["splits"][0]["num_bytes"] > 0
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    ds, messages = _load_quietly(copy)
    assert len(ds) == len(tiny_chain.triplets())
    assert not [m for m in messages if "card" in m.lower() or "malformed" in m.lower()], messages
    # the check can fail: a card without num_bytes (the old one) is warned about
    text = (copy / "README.md").read_text()
    (copy / "README.md").write_text(
        "\n".join(line for line in text.splitlines() if "num_bytes" not in line)
    )
    _, old = _load_quietly(copy)
    assert any("malformed" in m for m in old), old


def test_webdataset_shards_beside_the_parquet(tiny_chain):
    wds = pytest.importorskip("webdataset")
    folder = tiny_chain.store.root / "dataset"
    shards = sorted((folder / "webdataset").glob("*.tar"))
    assert shards
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil"))
    triplets = {t.triplet_id: t for t in tiny_chain.triplets()}
    assert len(samples) == len(triplets)
    for s in samples[:10]:
        meta = s["json"]
        t = triplets[meta["triplet_id"]]
        assert meta["instruction"] == t.instruction and meta["origin"] == t.origin
        assert s["source.png"].size == (t.width, t.height)
        assert s["edited.png"].tobytes() == tiny_chain.store.blobs.get(t.edited_image).tobytes()


def test_webdataset_tars_are_the_bytes_webdatasets_own_writer_writes(tiny_chain, tmp_path):
    wds = pytest.importorskip("webdataset")
    blobs = tiny_chain.store.blobs
    rows = tiny_chain.triplets()[:7]
    ours = write_webdataset(rows, blobs, tmp_path / "ours", shard_rows=3)
    theirs = []
    for i in range(0, len(rows), 3):
        path = tmp_path / f"theirs-{i}.tar"
        with wds.TarWriter(str(path), mtime=TAR_MTIME) as writer:
            for row in rows[i : i + 3]:
                writer.write(
                    {
                        "__key__": sample_key(row.triplet_id),
                        "source.png": blobs.read_bytes(row.source_image),
                        "edited.png": blobs.read_bytes(row.edited_image),
                        "json": metadata(row),
                    }
                )
        theirs.append(path.read_bytes())
    assert len(rows) == 7 and len(ours) == 3
    assert [p.read_bytes() for p in ours] == theirs
    # from record batches (the export's path) the same bytes
    table = tiny_chain.tables.triplets().slice(0, 7)
    again = write_webdataset(table.to_batches(max_chunksize=2), blobs, tmp_path / "b", 3)
    assert [p.read_bytes() for p in again] == theirs
    # names the ustar header cannot hold (long, non-ASCII) take tarfile's PAX records
    for name in ("k" * 99 + ".json", "k" * 140 + ".json", "clé-é.json"):
        ours_one = tmp_path / "one.tar"
        shard = TarShard(ours_one)
        shard.add(name, b"{}")
        shard.close()
        with wds.TarWriter(str(tmp_path / "theirs.tar"), mtime=TAR_MTIME) as writer:
            writer.write({"__key__": name.rsplit(".", 1)[0], "json": b"{}"})
        assert ours_one.read_bytes() == (tmp_path / "theirs.tar").read_bytes(), name


def test_preference_pairs_stream_into_the_export_and_the_card_counts_them(tiny_chain, tmp_path):
    whole = tiny_chain.preference_pairs()
    assert whole.num_rows >= 3
    blobs = tiny_chain.store.blobs
    counted: dict[str, int] = {}

    def body(rows: dict[str, int]) -> str:
        counted.update(rows)
        return "# streamed\n"

    slices = (whole.slice(i, 2) for i in range(0, whole.num_rows, 2))
    streamed = export_dataset([], blobs, tmp_path / "a", body, 2, None, slices)
    held = export_dataset([], blobs, tmp_path / "b", "# held\n", 2, None, whole)
    assert [p.name for p in streamed] == [p.name for p in held]
    assert [p.read_bytes() for p in streamed] == [p.read_bytes() for p in held]
    assert counted == {"default": 0, "multiturn": 0, "preference": whole.num_rows}
    assert "# streamed" in (tmp_path / "a" / "README.md").read_text()
    stats = tiny_chain.store.read_stats("export")
    assert stats["rows_by_config"]["preference"] == whole.num_rows


def test_push_uploads_the_export_up_to_the_upload_call(tiny_chain, monkeypatch):
    calls = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", repo_id, kw))
        return f"https://huggingface.co/datasets/{repo_id}"

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw))
        return "commit"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    run = tiny_chain.store.root
    assert cli.main(["push", str(run), "me/edits"]) == 0
    (_, repo, create), (_, repo2, upload) = calls
    assert repo == repo2 == "me/edits" and create["repo_type"] == "dataset" and create["private"]
    assert upload["folder_path"] == str(run / "dataset") and upload["ignore_patterns"] is None
    calls.clear()
    push_dataset(run, "me/edits", private=False, webdataset=False)
    assert calls[0][2]["private"] is False and calls[1][2]["ignore_patterns"] == ["webdataset/*"]


def test_push_refuses_a_run_without_export_and_a_bad_repo_id(tmp_path, tiny_chain):
    with pytest.raises(RunFolderError, match="no exported dataset"):
        push_dataset(tmp_path, "me/x")
    with pytest.raises(Exception, match="not owner/name"):
        push_dataset(tiny_chain.store.root, "no-slash")


def test_a_config_outside_configs_finds_its_notebooks(tmp_path, monkeypatch):
    elsewhere = tmp_path / "mine" / "run.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text("notebooks: [notebooks/01_prompts.ipynb]\nparams: {N_PROMPTS: 2}\n")
    monkeypatch.chdir(tmp_path)
    cfg = RunConfig.load(elsewhere)  # found in the repository
    assert cfg.notebooks[0].is_file() and cfg.notebooks[0].name == "01_prompts.ipynb"
    local = tmp_path / "notebooks" / "02_mine.ipynb"
    local.parent.mkdir()
    local.write_text(json.dumps({"cells": []}))
    elsewhere.write_text("notebooks: [notebooks/02_mine.ipynb]\n")
    assert RunConfig.load(elsewhere).notebooks[0] == local  # found in the current folder
    elsewhere.write_text("notebooks: [notebooks/99_none.ipynb]\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.load(elsewhere)
    assert "tried:" in str(err.value) and str(tmp_path / "notebooks" / "99_none.ipynb") in str(
        err.value
    )


def test_tiny_diffusers_config_makes_its_models_when_missing(monkeypatch, tmp_path):
    from nhr.backends import tiny_diffusers

    written = []

    def fake_write(folder, seed=0):
        written.append(folder)
        for name in tiny_diffusers.TINY_MODELS:
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "model_index.json").write_text("{}")
        return {n: folder / n for n in tiny_diffusers.TINY_MODELS}

    monkeypatch.setattr(tiny_diffusers, "write_tiny_models", fake_write)
    cfg = RunConfig.load(cli.repo_root() / "configs" / "tiny-diffusers.yaml")
    assert cfg.tiny_models is not None
    cfg = cfg.model_copy(update={"tiny_models": tmp_path / "tiny"})
    assert len(cli.prepare_tiny_models(cfg)) == len(tiny_diffusers.TINY_MODELS)
    assert cli.prepare_tiny_models(cfg) == []  # present: nothing written again
    assert written == [tmp_path / "tiny"]
