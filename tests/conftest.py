"""Shared fixtures: a tiny in-process chain, a tiny `nhr run` through papermill, and an
S3 server on 127.0.0.1."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fakes.s3 import CREDENTIALS, moto_s3

from nhr.pipeline import Pipeline
from nhr.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
NHR = [sys.executable, "-m", "nhr.cli"]
TINY = {
    "N_PROMPTS": 6,
    "K_INSTRUCTIONS": 4,
    "N_SOURCE_SEEDS": 4,
    "LONG_SIDE_MIN": 96,
    "LONG_SIDE_MAX": 128,
    "ASPECT_MAX": 3.0,
    "M_EDIT_SEEDS": 3,
    "EDIT_GUIDANCE": [2.5, 3.5],
    "BATCH_SIZE": 8,
}


# A store pickles without credentials: worker processes (and Ray nodes) take them from
# their own environment, which is that of the time they started. So moto's credentials
# are set before any test starts one (moto accepts any; the endpoint, which a store does
# carry, is set by the ``s3`` fixture).
for _name, _value in CREDENTIALS.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def s3():
    """moto's S3 server on 127.0.0.1 with one bucket (``fakes.s3.BUCKET``) for the
    session, the AWS environment pointing at it; the value is a pyarrow filesystem on it."""
    pytest.importorskip("moto")
    with moto_s3() as fs:
        yield fs


def pytest_collection_modifyitems(config, items) -> None:
    """Skip `gpu` tests without CUDA and `slow` tests unless NHR_SLOW=1."""
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "slow" in item.keywords and os.environ.get("NHR_SLOW") != "1":
            item.add_marker(pytest.mark.skip(reason="slow: set NHR_SLOW=1 (needs weights)"))


def run_chain(run_dir: Path, params: dict | None = None) -> Pipeline:
    """Run every stage in-process on the synthetic world."""
    pipe = Pipeline.open(run_dir, {**TINY, **(params or {})}, progress=False)
    pipe.run_chain()
    return pipe


def exported_rows(store: RunStore) -> list[tuple[str, str, str]]:
    """(sha256 of source bytes, instruction, sha256 of edited bytes) of every exported
    triplet, read from the dataset's parquet shards wherever the run folder is."""
    rows = []
    for rel in store.walk("dataset/data"):
        if not rel.split("/")[-1].startswith("train-"):
            continue
        path, fs = store.files.arrow(rel)
        table = pq.read_table(
            path, filesystem=fs, columns=["source_image", "instruction", "edited_image"]
        )
        for src, text, edited in zip(
            *(table.column(c).to_pylist() for c in table.column_names), strict=True
        ):
            rows.append(
                (
                    hashlib.sha256(src["bytes"]).hexdigest(),
                    text,
                    hashlib.sha256(edited["bytes"]).hexdigest(),
                )
            )
    return sorted(rows)


def nhr_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `nhr` command line in a subprocess from the repository root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*NHR, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory) -> Pipeline:
    """One in-process tiny run shared by the tests that only read it."""
    return run_chain(tmp_path_factory.mktemp("chain") / "run")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One `nhr run configs/tiny.yaml` through papermill, shared by notebook tests."""
    run_dir = tmp_path_factory.mktemp("nb") / "tiny"
    proc = nhr_cli("run", "configs/tiny.yaml", "--run-dir", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
