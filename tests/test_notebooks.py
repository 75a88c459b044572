"""The chain through papermill (`nhr run`), with tiny parameters; and SIGKILL + resume."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import datasets
import nbformat
import pyarrow.parquet as pq
import pytest
import yaml

from nhr.store import RunStore
from tests.conftest import NHR, ROOT

pytestmark = pytest.mark.notebook

TABLES = (
    "prompts",
    "sources",
    "plausibility",
    "candidates",
    "prefilter",
    "lowlevel",
    "validator",
    "mined",
)


def _rows(run_dir: Path, table: str) -> list[str]:
    """A table's rows as sorted JSON strings, without the timing columns."""
    tables = RunStore(run_dir).tables
    out = []
    for row in tables.read(table).to_pylist() if tables.exists(table) else []:
        row.pop("seconds", None)
        out.append(json.dumps(row, sort_keys=True))
    return sorted(out)


def test_run_records_every_stage(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    stages = [f["stage"] for f in summary["funnel"]]
    assert stages == [
        "prompts",
        "T2I images",
        "after plausibility gate",
        "edits generated",
        "after soft pre-filter",
        "after low-level check",
        "after hard validator",
        "after argmax selection",
        "after inversion",
        "after backward consistency",
        "after composition",
        "after dedup",
    ]
    assert summary["triplets"] == summary["funnel"][-1]["rows"] > 0
    assert set(summary["audit"]) == {"mined", "inverted", "composed"}
    assert summary["multiplier"] > 1.5
    multiturn = datasets.load_dataset(str(tiny_run / "dataset"), "multiturn", split="train")
    assert multiturn.num_rows == summary["origins"]["composed"]
    assert all(len(r["images"]) == 3 and len(r["instructions"]) == 2 for r in multiturn)
    for key in ("precision", "recall", "spearman"):
        assert key in summary["judge_vs_truth"]
    judged = summary["judge_errors"]["validator"]  # the synthetic judge never errs
    assert [(v["verdicts"], v["errors"]) for v in judged.values()] == [
        (summary["funnel"][5]["rows"], 0)
    ]
    listed = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())["notebooks"]
    for nb in (ROOT / name for name in listed):
        executed = nbformat.read(tiny_run / "notebooks" / nb.name, as_version=4)
        tags = [c.metadata.get("tags", []) for c in executed.cells]
        injected = [
            c for c, t in zip(executed.cells, tags, strict=True) if "injected-parameters" in t
        ]
        assert injected and str(tiny_run) in injected[0].source
    validate = nbformat.read(tiny_run / "notebooks" / "05_validate.ipynb", as_version=4)
    shown = [c for c in validate.cells if "judge_error_rows" in c.source]
    assert len(shown) == 1 and "share" in json.dumps(shown[0].outputs)
    for plot in ("funnel", "scores", "edit_types", "resolutions", "samples"):
        assert (tiny_run / "plots" / f"{plot}.png").stat().st_size > 5000
    ds = datasets.load_dataset(str(tiny_run / "dataset"), split="train")
    assert ds.num_rows == summary["triplets"]
    stats = json.loads((tiny_run / "stats" / "candidates.json").read_text())
    assert stats["rows_out"] == summary["funnel"][3]["rows"]


def test_source_notebooks_keep_no_outputs():
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        book = nbformat.read(nb, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, nb.name
                assert "def " not in cell.source, f"{nb.name} defines a function"


def _kernels_of(pid: int) -> list[int]:
    """Processes started with NHR_RUN_PID=pid (the kernels of that `nhr run`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"NHR_RUN_PID={pid}".encode() in env:
                found.append(int(proc.name))
    return found


def _tiny_part(tmp_path: Path, run_dir: Path, first: str = "01_prompts") -> list[str]:
    """`nhr run` of configs/tiny.yaml's notebooks from ``first`` through 05_validate,
    which writes the last of TABLES (``mined``): the kill and damage tests compare those
    tables only, so their runs skip bootstrap and export."""
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    names = [Path(nb).stem for nb in config["notebooks"]]
    start, stop = names.index(first), names.index("05_validate")
    config["notebooks"] = [str(ROOT / nb) for nb in config["notebooks"][start : stop + 1]]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return [*NHR, "run", str(path), "--run-dir", str(run_dir), "--no-progress"]


def test_sigkill_during_edits_then_rerun_gives_the_same_rows(tiny_run, tmp_path):
    run_dir = tmp_path / "killed"
    args = _tiny_part(tmp_path, run_dir)
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ledger = run_dir / "tables" / "candidates" / "ledger"  # tiny.yaml commits every batch
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ledger.is_dir() and list(ledger.glob("*.parquet")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "nhr run ended before the edits stage began"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(_rows(run_dir, "candidates"))
    expected = len(_rows(tiny_run, "candidates"))
    assert 0 < written < expected, "the kill did not land inside the edits stage"
    # the orphaned kernel notices its parent is gone and stops writing
    deadline = time.monotonic() + 10
    while _kernels_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _kernels_of(proc.pid)
    settled = _rows(run_dir, "candidates")
    time.sleep(1.0)
    assert _rows(run_dir, "candidates") == settled  # nothing writes behind our back

    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for table in TABLES:
        assert _rows(run_dir, table) == _rows(tiny_run, table), table
    ids = [json.loads(r)["candidate_id"] for r in _rows(run_dir, "candidates")]
    assert len(ids) == len(set(ids))


def test_a_damaged_image_is_named_then_repaired(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "damaged"
    shutil.copytree(tiny_run, run_dir)
    tables = RunStore(run_dir).tables
    shard = tables.shard_path("candidates", tables.entries("candidates")[0])
    victim = pq.read_table(shard, columns=["image"]).column("image")[0].as_py()
    (run_dir / victim).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    shutil.rmtree(run_dir / "tables" / "prefilter")  # so the stages read it again
    args = _tiny_part(tmp_path, run_dir, first="03_edits")  # 01-02 have nothing to do
    failed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    last = failed.stderr.strip().splitlines()[-1]
    assert ".ipynb failed: ImageError" in last and "cannot be read" in last
    assert "nhr repair" in last and victim in last
    repaired = subprocess.run(
        [*NHR, "repair", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert repaired.returncode == 0 and "1 damaged" in repaired.stdout
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    for table in TABLES:
        assert _rows(run_dir, table) == _rows(tiny_run, table), table


def test_rating_notebook_from_notebooks_folder_resolves_paths_at_the_root(tiny_chain, tmp_path):
    """JupyterLab starts a kernel in notebooks/: relative paths still mean the
    repository's, and 11_rate runs top to bottom before anyone has rated."""
    import papermill

    from nhr.evaluate import rating

    rating_dir = tmp_path / "ratings"
    rel = {  # relative to the repository root, wrong from notebooks/
        "RUN_DIR": os.path.relpath(rating_dir, ROOT),
        "EVAL_RUN_DIR": os.path.relpath(tiny_chain.store.root, ROOT),
    }
    assert not (ROOT / "notebooks" / rel["RUN_DIR"]).resolve().is_relative_to(tmp_path)
    out = papermill.execute_notebook(
        str(ROOT / "notebooks" / "11_rate.ipynb"),
        str(tmp_path / "11.ipynb"),
        parameters={**rel, "RATE_ITEMS": 6},
        cwd=str(ROOT / "notebooks"),
        progress_bar=False,
    )
    assert len(rating.read_items(rating_dir / rating.ITEMS_FILE)) == 6  # drawn, at the root
    assert sorted(p.name for p in rating_dir.iterdir()) == [rating.ITEMS_FILE]  # no rating yet
    shown = [
        o.get("data", {}).get("text/plain", "")
        for c in out.cells
        if c.cell_type == "code"
        for o in c.outputs
    ]
    assert sum(rating.NO_RATINGS_YET in s for s in shown) == 2  # the summary and tuning cells
