"""`nhr run configs/photos.yaml` through papermill with tiny parameters: the chain runs
from a photo folder and the run records it."""

import json

import nbformat
import pytest
from conftest import nhr_cli

pytestmark = pytest.mark.notebook


def test_photos_config_runs_the_chain_from_photos(tmp_path):
    run, photos = tmp_path / "run", tmp_path / "collection"
    proc = nhr_cli(
        "run",
        "configs/photos.yaml",
        "--run-dir",
        str(run),
        "--no-progress",
        *("-p", "PHOTOS", str(photos)),
        *("-p", "PHOTOS_SYNTHETIC", "12"),
        *("-p", "K_INSTRUCTIONS", "3"),
        *("-p", "LONG_SIDE_MIN", "96"),
        *("-p", "LONG_SIDE_MAX", "128"),
        *("-p", "M_EDIT_SEEDS", "3"),
        *("-p", "BATCH_SIZE", "8"),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(photos.glob("world_*.png"))) == 12
    summary = json.loads((run / "summary.json").read_text())
    stage = summary["stages"]["photos"]
    assert stage["rows_in"] == 12 and stage["rows_out"] == 12
    kept = 12 - sum(stage.get("drops_by_reason", {}).values())
    assert summary["stages"]["sources"]["rows_out"] <= kept
    assert summary["triplets"] > 0 and set(summary["origins"]) >= {"mined", "inverted"}
    assert all(v >= 0.99 for v in summary["audit"].values()), summary["audit"]
    executed = nbformat.read(run / "notebooks" / "01_photos.ipynb", as_version=4)
    text = "".join(
        o.get("text", "") + json.dumps(o.get("data", {}))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "drops_by_reason" in text and "IProgress not found" not in text
    assert (run / "dataset" / "webdataset").is_dir()
