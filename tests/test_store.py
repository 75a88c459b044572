"""The run store: content-addressed blobs, atomic shards, bad images."""

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from nhr.errors import ImageError, RunFolderError
from nhr.store import RunStore, load_image


def _img(seed: int, size=(33, 17)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_blobs_are_content_addressed(tmp_path):
    store = RunStore(tmp_path)
    a, b = store.blobs.put(_img(1)), store.blobs.put(_img(1))
    assert a == b and a.startswith("blobs/")
    assert store.blobs.put(_img(2)) != a
    assert np.array_equal(np.asarray(store.blobs.get(a)), np.asarray(_img(1)))
    assert not list(tmp_path.rglob(".tmp-*"))


def test_shards_record_keys_and_ignore_temp_files(tmp_path):
    store = RunStore(tmp_path)
    table = pa.table({"x": [1, 2]})
    store.tables.write_shard("t", "a", table, ["k1", "k2"], {"seconds": 1.5})
    (store.tables.folder("t") / ".tmp-half-written").write_bytes(b"garbage")
    [(_path, keys, info)] = list(store.tables.iter_meta("t"))
    assert keys == ["k1", "k2"] and info["seconds"] == 1.5
    assert store.tables.read("t").column("x").to_pylist() == [1, 2]


def test_damaged_shard_names_the_file(tmp_path):
    store = RunStore(tmp_path)
    store.tables.folder("t").mkdir(parents=True)
    (store.tables.folder("t") / "part-bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(RunFolderError, match=r"part-bad\.parquet is damaged"):
        store.tables.read("t")


def test_corrupt_image_is_a_clear_error(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(ImageError, match=r"x.png cannot be read .* rerun the stage"):
        load_image(path)
    with pytest.raises(ImageError, match="is missing"):
        load_image(tmp_path / "nope.png")


def test_huge_image_is_refused(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(ImageError, match="over 10000 pixels"):
        load_image(path, max_pixels=10_000)
