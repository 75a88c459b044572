"""``nhr push RUN REPO_ID``: upload a run's exported dataset to the Hugging Face hub.

The export (``<run>/dataset``: parquet shards, WebDataset shards, the card) is uploaded
as it is, in one commit, with ``huggingface_hub``'s ``HfApi``: the dataset repository is
created if it does not exist (private unless asked otherwise), then the folder is
uploaded. The token comes from the environment variable the config names
(``HF_TOKEN_ENV``, default ``HF_TOKEN``) or huggingface_hub's own login; it is never
written anywhere. A run folder on an object store (``s3://…``) is read through pyarrow.fs
like the rest of the run: its ``dataset/`` objects are fetched into a temporary folder,
uploaded from there, and the folder is deleted.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nhr.errors import NhrError, RunFolderError
from nhr.store.files import Files, open_files


class PushError(NhrError):
    """The dataset cannot be uploaded."""


def _token_env(files: Files) -> str:
    """The token variable of the run's saved config (``HF_TOKEN`` if it names none)."""
    import yaml

    if files.exists("config.yaml"):
        data = yaml.safe_load(files.read_bytes("config.yaml").decode()) or {}
        return str(data.get("HF_TOKEN_ENV") or "HF_TOKEN")
    return "HF_TOKEN"


@contextlib.contextmanager
def _local_export(files: Files, webdataset: bool) -> Iterator[Path]:
    """The run's ``dataset/`` as a local folder: itself where the run is local, else a
    temporary copy of its objects (the WebDataset shards only when they are pushed)."""
    local = files.local_path("dataset")
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="nhr-push-") as tmp:
        root = Path(tmp) / "dataset"
        for rel in files.walk("dataset"):
            inner = rel.split("/", 1)[1]
            if not webdataset and inner.startswith("webdataset/"):
                continue
            target = root / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files.read_bytes(rel))
        yield root


def push_dataset(
    run_dir: Path | str,
    repo_id: str,
    private: bool = True,
    webdataset: bool = True,
    api: Any = None,
) -> str:
    """Upload the export of ``run_dir`` (a folder or an object-store URL) to the dataset
    repository ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi

    files = open_files(run_dir)
    where = files.describe("dataset")
    shards = [n for n, _ in files.listdir("dataset/data") if n.endswith(".parquet")]
    if not files.exists("dataset/README.md") or not shards:
        raise RunFolderError(
            f"{files.describe()} has no exported dataset ({where} with README.md and data/)",
            "run the export (notebook 07, or Pipeline.export()) first",
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"repository id {repo_id!r} is not owner/name", "e.g. me/my-edits")
    token = os.environ.get(_token_env(files)) or None
    api = api or HfApi(token=token)
    name = str(run_dir).rstrip("/").rsplit("/", 1)[-1]
    with _local_export(files, webdataset) as folder:
        try:
            url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(
                folder_path=str(folder),
                repo_id=repo_id,
                repo_type="dataset",
                commit_message=f"nhr export of run {name}",
                ignore_patterns=None if webdataset else ["webdataset/*"],
            )
        except Exception as err:  # the hub client raises many kinds; all mean "not uploaded"
            raise PushError(
                f"uploading {where} to {repo_id} failed ({type(err).__name__}: {str(err)[:200]})",
                "check the repository id, your network and the token (HF_TOKEN or `hf auth login`)",
            ) from None
    return str(url)
