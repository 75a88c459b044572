"""The run store: content-addressed blobs, ledgered shards, bad images."""

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
    store.tables.commit("t", table, ["k1", "k2"], {"seconds": 1.5})
    (store.tables.folder("t") / "data" / ".tmp-half-written").write_bytes(b"garbage")
    [entry] = store.tables.entries("t")
    assert store.tables.input_keys("t").to_pylist() == ["k1", "k2"]
    assert entry.info["seconds"] == 1.5 and entry.rows == 2 and entry.info["rows_in"] == 2
    assert store.tables.read("t").column("x").to_pylist() == [1, 2]
    assert store.tables.clean("t") == ["tables/t/data/.tmp-half-written"]


def test_an_uncommitted_shard_is_never_read(tmp_path):
    store = RunStore(tmp_path)
    store.tables.commit("t", pa.table({"x": [1]}), ["a"], {})
    (store.tables.folder("t") / "data" / "99-orphan.parquet").write_bytes(b"orphan")
    assert store.tables.read("t").column("x").to_pylist() == [1]
    assert store.tables.count("t") == 1
    assert store.tables.clean("t") == ["tables/t/data/99-orphan.parquet"]


def test_count_and_exists_open_no_shard(tmp_path):
    store = RunStore(tmp_path)
    assert not store.tables.exists("t")
    for i in range(3):
        store.tables.commit("t", pa.table({"x": list(range(i + 1))}), [f"k{i}"], {})
    for shard in (store.tables.folder("t") / "data").iterdir():
        shard.write_bytes(b"unreadable")  # the ledger alone answers
    assert store.tables.exists("t") and store.tables.count("t") == 6


def test_read_columns_and_batches(tmp_path):
    store = RunStore(tmp_path)
    store.tables.commit("t", pa.table({"x": list(range(10)), "y": ["a"] * 10}), [], {})
    store.tables.commit("t", pa.table({"x": list(range(10, 15)), "y": ["b"] * 5}), [], {})
    assert store.tables.read("t", columns=["x"]).column_names == ["x"]
    batches = list(store.tables.iter_batches("t", columns=["y"], batch_rows=4))
    assert [b.num_rows for b in batches] == [4, 4, 2, 4, 1]
    schema = pa.schema([("x", pa.int64()), ("y", pa.string())])
    assert store.tables.read("missing", schema).num_rows == 0
    with pytest.raises(RunFolderError, match="does not exist"):
        store.tables.read("missing")


def test_a_whole_table_write_replaces_the_table(tmp_path):
    store = RunStore(tmp_path)
    store.tables.commit("t", pa.table({"x": [1, 2]}), ["a", "b"], {})
    store.tables.write_table("t", pa.table({"x": [7]}), {"settings_hash": "whole"})
    assert store.tables.read("t").column("x").to_pylist() == [7]
    store.tables.write_table("t", pa.table({"x": [8, 9]}), {})
    assert store.tables.read("t").column("x").to_pylist() == [8, 9]
    assert len(list((store.tables.folder("t") / "data").iterdir())) == 1
    assert len(list((store.tables.folder("t") / "ledger").iterdir())) == 1


def test_named_parts_are_read_back(tmp_path):
    store = RunStore(tmp_path)
    assert store.tables.read_part("t", "a") is None
    store.tables.write_part("t", "a", pa.table({"x": [1]}), ["k"], {})
    store.tables.write_part("t", "b", pa.table({"x": [2]}), ["j"], {})
    assert store.tables.read_part("t", "a").column("x").to_pylist() == [1]
    assert sorted(store.tables.read("t").column("x").to_pylist()) == [1, 2]


def test_damaged_shard_names_the_file(tmp_path):
    store = RunStore(tmp_path)
    entry = store.tables.commit("t", pa.table({"x": [1]}), [], {})
    store.tables.shard_path("t", entry).write_bytes(b"not parquet")
    with pytest.raises(RunFolderError, match=rf"{entry.shard} is damaged"):
        store.tables.read("t")


def test_an_old_shard_format_is_refused(tmp_path):
    store = RunStore(tmp_path)
    store.tables.folder("t").mkdir(parents=True)
    (store.tables.folder("t") / "part-abc.parquet").write_bytes(b"old")
    with pytest.raises(RunFolderError, match="older nhr"):
        store.tables.exists("t")


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


def test_a_table_written_in_parts_replaces_the_old_one_and_marks_its_step_last(tmp_path):
    store = RunStore(tmp_path)
    schema = pa.schema([("x", pa.int64())])
    store.tables.write_table("t", pa.table({"x": [9, 9, 9]}), {})
    store.write_stats("t", {"input_fingerprint": "old"})
    seen = []

    def parts():
        for part in ([1, 2], [], [3]):
            seen.append(store.read_stats("t"))  # gone before the first part is written
            yield pa.table({"x": part}, schema=schema)

    assert store.write_parts("t", parts(), schema, "new") == 3
    assert seen == [None, None, None]
    assert store.tables.read("t", schema).column("x").to_pylist() == [1, 2, 3]
    entries = store.tables.entries("t")
    assert [e.info["kind"] for e in entries] == ["whole", "rows"]  # the empty part skipped
    assert all(e.info["input_fingerprint"] == "new" for e in entries)
    assert store.write_parts("t", iter([]), schema, "none") == 0  # no parts: an empty table
    assert store.tables.exists("t") and store.tables.count("t") == 0
    assert len(list((tmp_path / "tables" / "t" / "data").iterdir())) == 1  # old shards gone
