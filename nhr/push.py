"""``nhr push RUN REPO_ID``: upload a run's exported dataset to the Hugging Face hub.

The export (``<run>/dataset``: parquet shards, WebDataset shards, the card) is uploaded
as it is, in one commit, with ``huggingface_hub``'s ``HfApi``: the dataset repository is
created if it does not exist (private unless asked otherwise), then the folder is
uploaded. The token comes from the environment variable the config names
(``HF_TOKEN_ENV``, default ``HF_TOKEN``) or huggingface_hub's own login; it is never
written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nhr.errors import NhrError, RunFolderError


class PushError(NhrError):
    """The dataset cannot be uploaded."""


def _token_env(run_dir: Path) -> str:
    """The token variable of the run's saved config (``HF_TOKEN`` if it names none)."""
    import yaml

    saved = run_dir / "config.yaml"
    if saved.is_file():
        data = yaml.safe_load(saved.read_text()) or {}
        return str(data.get("HF_TOKEN_ENV") or "HF_TOKEN")
    return "HF_TOKEN"


def push_dataset(
    run_dir: Path | str,
    repo_id: str,
    private: bool = True,
    webdataset: bool = True,
    api: Any = None,
) -> str:
    """Upload ``run_dir/dataset`` to the dataset repository ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    folder = run_dir / "dataset"
    if not (folder / "README.md").is_file() or not any(folder.glob("data/*.parquet")):
        raise RunFolderError(
            f"{run_dir} has no exported dataset ({folder} with README.md and data/)",
            "run the export (notebook 07, or Pipeline.export()) first",
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"repository id {repo_id!r} is not owner/name", "e.g. me/my-edits")
    token = os.environ.get(_token_env(run_dir)) or None
    api = api or HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"nhr export of run {run_dir.name}",
            ignore_patterns=None if webdataset else ["webdataset/*"],
        )
    except Exception as err:  # the hub client raises many kinds; all mean "not uploaded"
        raise PushError(
            f"uploading {folder} to {repo_id} failed ({type(err).__name__}: {str(err)[:200]})",
            "check the repository id, your network and the token (HF_TOKEN or `hf auth login`)",
        ) from None
    return str(url)
