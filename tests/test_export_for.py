"""``nhr export-for``: each layout read the way its trainer reads it, every file named
there present and equal to the export's images, captions the instructions."""

import csv
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from nhr.errors import ConfigError
from nhr.train.export_for import export_for
from tests.conftest import nhr_cli
from tests.train_fixtures import triplet_images, write_export

N = 5


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_export(tmp_path_factory.mktemp("for") / "run" / "dataset", N, (48, 32))


def expected() -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """triplet id → (source pixels, edited pixels, instruction) the export holds."""
    out = {}
    for i in range(N):
        src, edited, text = triplet_images(i, (48, 32))
        out[f"t{i:06d}"] = (np.asarray(src), np.asarray(edited), text)
    return out


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_diffsynth_metadata_csv(export, tmp_path):
    """DiffSynth-Studio reads the CSV's rows and joins each file key to the base path."""
    out = tmp_path / "ds"
    proc = nhr_cli("export-for", "diffsynth", str(export.parent), str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{N} triplets in {out}" in proc.stdout
    with open(out / "metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N and set(rows[0]) == {"image", "prompt", "edit_image"}
    want = expected()
    for row in rows:
        key = Path(row["image"]).stem
        src, edited, text = want[key]
        assert row["prompt"] == text
        assert np.array_equal(pixels(out / row["image"]), edited)  # image: the target
        assert np.array_equal(pixels(out / row["edit_image"]), src)  # edit_image: the source
    assert "--data_file_keys" in (out / "README.md").read_text()


def test_musubi_jsonl_and_dataset_config(export, tmp_path):
    """musubi-tuner: the TOML's image_jsonl_file, then image_path / control_path / caption."""
    out = tmp_path / "mu"
    assert export_for("musubi", export.parent, out) == N
    config = tomllib.loads((out / "dataset_config.toml").read_text())
    assert config["general"]["enable_bucket"] is True
    jsonl = Path(config["datasets"][0]["image_jsonl_file"])
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    want = expected()
    assert len(lines) == N
    for item in lines:
        assert set(item) == {"image_path", "control_path", "caption"}
        src, edited, text = want[Path(item["image_path"]).stem]
        assert item["caption"] == text
        assert np.array_equal(pixels(Path(item["image_path"])), edited)
        assert np.array_equal(pixels(Path(item["control_path"])), src)


def test_ai_toolkit_folders_with_matching_names(export, tmp_path):
    """ai-toolkit: images in folder_path with same-stem .txt captions, and the control
    image of each under the same file name in control_path."""
    out = tmp_path / "ai"
    assert export_for("ai-toolkit", export, out) == N  # an export folder works too
    entry = yaml.safe_load((out / "dataset.yaml").read_text())["datasets"][0]
    folder, control = Path(entry["folder_path"]), Path(entry["control_path"])
    images = sorted(p for p in folder.iterdir() if p.suffix != f".{entry['caption_ext']}")
    want = expected()
    assert len(images) == N
    for img in images:
        src, edited, text = want[img.stem]
        assert (folder / f"{img.stem}.txt").read_text() == text
        assert np.array_equal(pixels(img), edited)
        assert np.array_equal(pixels(control / img.name), src)


def test_refuses_a_full_folder_and_an_unknown_layout(export, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_for("musubi", export, tmp_path / "full")
    with pytest.raises(ConfigError, match="unknown trainer layout"):
        export_for("kohya", export, tmp_path / "new")
