"""Photos as sources: collections, the loader's refusals counted, the chain from photos."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes.image_zoo import write_zoo
from fakes.model_server import FakeModelServer
from fakes.remote import FAST, close_clients, use_fake
from PIL import Image

from nhr.errors import ConfigError
from nhr.photo_collections import CollectionError, open_collection
from nhr.pipeline import Pipeline
from nhr.stages.photos import plan_photo_jobs

WORLD = {
    "SOURCES": "photos",
    "K_INSTRUCTIONS": 3,
    "LONG_SIDE_MIN": 96,
    "LONG_SIDE_MAX": 160,
    "M_EDIT_SEEDS": 3,
    "EDIT_GUIDANCE": [2.5, 3.5],
    "BATCH_SIZE": 8,
}


def _png(seed: int, size=(64, 48)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _real_photos():
    skdata = pytest.importorskip("skimage.data")
    sk = pytest.importorskip("sklearn.datasets")
    return [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), *sk.load_sample_images().images]


def test_chain_from_synthetic_photos(tmp_path):
    """World pictures written as PNG files stand in for photos: the whole chain runs from
    them, the caption stands where the T2I prompt stood, and the audit holds."""
    from nhr.summary import build_summary

    params = {**WORLD, "PHOTOS": str(tmp_path / "photos"), "PHOTOS_SYNTHETIC": 12}
    pipe = Pipeline.open(tmp_path / "run", params, progress=False)
    pipe.run_chain()
    photos = pipe.rows("photos")
    assert len(photos) == 12 and len(list((tmp_path / "photos").glob("*.png"))) == 12
    captioned = {p.photo_id: p.caption for p in photos if p.passed}
    assert len(captioned) >= 8
    sources = pipe.rows("sources")
    assert sources and all(s.prompt == captioned[s.prompt_id] for s in sources)
    assert all(s.model_id.startswith("photo:") for s in sources)
    mined = pipe.rows("mined")
    assert mined and all(t.prompt == captioned[t.prompt_id] for t in mined)
    summary = build_summary(pipe.tables, pipe.cfg, pipe.backends.truth)
    assert summary["stages"]["photos"]["rows_in"] == 12
    assert set(summary["origins"]) >= {"mined", "inverted"}
    assert all(v >= 0.99 for v in summary["audit"].values()), summary["audit"]


def test_every_odd_file_is_loaded_or_counted_and_the_chain_completes(tmp_path):
    """A photo folder mixing world pictures, real photos and the zoo of bad files: each
    zoo file is loaded or refused with its reason counted; the run completes."""
    folder = tmp_path / "photos"
    params = {**WORLD, "PHOTOS": str(folder), "PHOTOS_SYNTHETIC": 8}
    cases = write_zoo(folder)
    real = _real_photos()
    for i, arr in enumerate(real):
        Image.fromarray(arr).save(folder / f"real_{i}.jpg", quality=90)
    pipe = Pipeline.open(tmp_path / "run", params, progress=False)
    pipe.run_chain()
    rows = {p.location: p for p in pipe.rows("photos")}
    for name, case in cases.items():
        row = rows[case.file]
        if case.expect == "ok":
            # loaded by the loader, then refused by the synthetic captioner: not a world picture
            assert row.reason == "caption_not_a_world_picture", name
        else:
            assert not row.passed and row.reason == f"image_{case.expect}", name
    assert all(
        rows[f"real_{i}.jpg"].reason == "caption_not_a_world_picture" for i in range(len(real))
    )
    drops = pipe.store.read_stats("photos")["drops_by_reason"]
    bad = [c.expect for c in cases.values() if c.expect != "ok"]
    for reason in set(bad):
        assert drops[f"image_{reason}"] == bad.count(reason)
    assert pipe.store.read_stats("export")["rows_out"] > 0


def test_real_photos_through_the_plumbing_backends(tmp_path):
    """Real photos (skimage, scikit-learn) are read, downscaled and captioned; k
    instructions are written from each caption; zoo refusals are counted."""
    folder = tmp_path / "photos"
    folder.mkdir()
    real = _real_photos()
    for i, arr in enumerate(real):
        Image.fromarray(arr).save(folder / f"p{i}.png")
    cases = write_zoo(folder / "zoo")
    params = {
        "SOURCES": "photos",
        "PHOTOS": str(folder),
        "CAPTIONER": "plumbing",
        "CAPTION_WRITER": "plumbing",
        "GATE_JUDGE": "plumbing-accept-all",
        "K_INSTRUCTIONS": 2,
        "LONG_SIDE_MIN": 64,
        "LONG_SIDE_MAX": 128,
    }
    pipe = Pipeline.open(tmp_path / "run", params, progress=False)
    pipe.run_chain(until="gate")
    photos = pipe.rows("photos")
    ok = [p for p in photos if p.passed]
    assert len(ok) == len(real) + sum(c.expect == "ok" for c in cases.values())
    assert all(max(p.width, p.height) <= 128 and p.caption.startswith("a photo") for p in ok)
    prompts = pipe.rows("prompts")
    assert len(prompts) == len(ok) and all(len(p.instructions) == 2 for p in prompts)
    assert len(pipe.rows("sources")) == len(ok)


def test_collections_parquet_imagefolder_webdataset(tmp_path):
    images = [_png(i) for i in range(5)]
    table = pa.table(
        {
            "caption": [f"c{i}" for i in range(5)],
            "photo": [{"bytes": b, "path": None} for b in images],
        }
    )
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)
    coll = open_collection(str(tmp_path / "p.parquet"))
    assert coll.kind == "parquet" and len(coll) == 5 and coll.raw(3) == images[3]
    with pytest.raises(CollectionError, match="no column 'nope'"):
        open_collection(str(tmp_path / "p.parquet"), "nope")

    folder = tmp_path / "imgf"
    folder.mkdir()
    for i, b in enumerate(images):
        (folder / f"{i}.png").write_bytes(b)
    lines = [json.dumps({"file_name": f"{i}.png"}) for i in range(5)]
    (folder / "metadata.jsonl").write_text("\n".join(lines))
    coll = open_collection(str(folder))
    assert coll.kind == "imagefolder" and coll.raw(2).read_bytes() == images[2]

    shards = tmp_path / "wds"
    shards.mkdir()
    for s in range(2):
        with tarfile.open(shards / f"photos-{s:03d}.tar", "w") as tar:
            for i in range(3):
                for ext, data in (("jpg", images[(s * 3 + i) % 5]), ("json", b"{}")):
                    info = tarfile.TarInfo(f"k{s}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    by_folder = open_collection(str(shards))
    by_braces = open_collection(str(shards / "photos-{000..001}.tar"))
    assert by_folder.kind == by_braces.kind == "webdataset"
    assert len(by_folder) == len(by_braces) == 6 and by_braces.raw(4) == images[4]
    with pytest.raises(CollectionError, match="does not exist"):
        open_collection(str(tmp_path / "missing"))


def test_photo_sampling_is_uniform_and_seeded(tmp_path):
    for i in range(200):
        (tmp_path / f"{i:03d}.png").write_bytes(b"x")
    coll = open_collection(str(tmp_path))
    jobs = plan_photo_jobs(coll, 50, seed=3)
    assert jobs == plan_photo_jobs(coll, 50, seed=3) and len(jobs) == 50
    idx = [j.index for j in jobs]
    assert idx == sorted(idx) and max(idx) > 150 and min(idx) < 50
    assert len(plan_photo_jobs(coll, 0, 3)) == 200


def test_photos_config_is_checked(tmp_path):
    pipe = Pipeline.open(tmp_path / "run", {"SOURCES": "photos"}, progress=False)
    with pytest.raises(ConfigError, match="PHOTOS is empty"):
        pipe.prompts()
    with pytest.raises(ConfigError, match="IMAGE_BACKGROUND"):
        Pipeline.open("/nonexistent-run", {"IMAGE_BACKGROUND": "pinkish"}, progress=False)


def test_remote_captioner_and_writer_on_the_fake_server(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(_png(i))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    params = {
        "SOURCES": "photos",
        "PHOTOS": str(folder),
        "CAPTIONER": "gemini",
        "CAPTION_WRITER": "gemini",
        "K_INSTRUCTIONS": 3,
        **FAST,
        "API_TIMEOUT_SECONDS": 10.0,
    }
    with FakeModelServer(seed=2) as srv:
        use_fake(monkeypatch, srv)
        pipe = Pipeline.open(tmp_path / "run", params, progress=False)
        pipe.prompts()
        asked = {(r["fields"], r["text"]) for r in srv.requests("gemini")}
        close_clients(pipe.backends)
    photos = pipe.rows("photos")
    assert sum(p.passed for p in photos) == 4
    assert sum(f == "caption,style,topic" for f, _ in asked) == 4  # one caption per photo
    assert sum(f == "instructions,operations" for f, _ in asked) >= 1
    assert {p.captioner_id for p in photos} == {"gemini:gemini-2.5-flash"}
    assert {p.captioner_version for p in photos} == {"caption-v1"}
    prompts = pipe.rows("prompts")
    assert all(len(p.instructions) == 3 for p in prompts)
    stats = pipe.store.read_stats("photos")
    assert stats["drops_by_reason"] == {"image_not_an_image": 1}  # a PNG signature only
    assert stats["usage"]["calls"] >= 4
