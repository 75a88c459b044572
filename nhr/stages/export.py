"""Stage 11: export accepted triplets as a Hugging Face dataset folder.

The folder holds ``data/train-XXXXX-of-YYYYY.parquet`` shards with the images embedded
(``datasets.Image`` columns, so the dataset travels without its run folder) and a
dataset card ``README.md`` whose front matter declares the config, so
``datasets.load_dataset(folder)`` loads it as is. The folder is built beside the old one
and swapped in with renames, so an interrupted export never leaves half a dataset.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from nhr.records import TripletRow
from nhr.store import BlobStore, atomic_write_bytes

TEXT_COLUMNS = (
    "triplet_id",
    "origin",
    "instruction",
    "edit_type",
    "style",
    "prompt",
    "prompt_id",
    "source_id",
    "candidate_id",
    "t2i_model",
    "editor_model",
    "prompter_version",
    "judge_id",
    "judge_prompt_version",
)
INT_COLUMNS = ("width", "height", "t2i_seed", "t2i_steps", "edit_seed", "edit_steps")
FLOAT_COLUMNS = ("adherence", "aesthetic", "score", "edit_guidance")


def dataset_features() -> Any:
    """The ``datasets.Features`` of an exported triplet."""
    import datasets

    feats: dict[str, Any] = {
        "source_image": datasets.Image(),
        "edited_image": datasets.Image(),
    }
    feats.update({c: datasets.Value("string") for c in TEXT_COLUMNS})
    feats.update({c: datasets.Value("int64") for c in INT_COLUMNS})
    feats.update({c: datasets.Value("float64") for c in FLOAT_COLUMNS})
    feats["parents"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Features(feats)


def _columns(rows: list[TripletRow], blobs: BlobStore) -> dict[str, list[Any]]:
    """Column lists for a shard; images as embedded PNG bytes named by their hash."""
    cols: dict[str, list[Any]] = {
        "source_image": [
            {"bytes": blobs.read_bytes(r.source_image), "path": Path(r.source_image).name}
            for r in rows
        ],
        "edited_image": [
            {"bytes": blobs.read_bytes(r.edited_image), "path": Path(r.edited_image).name}
            for r in rows
        ],
    }
    for name in TEXT_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS:
        cols[name] = [getattr(r, name) for r in rows]
    cols["parents"] = [list(r.parents) for r in rows]
    return cols


def dataset_card(
    name: str, rows: list[TripletRow], funnel: list[dict[str, Any]], extra: str = ""
) -> str:
    """The dataset card: front matter for ``load_dataset``, counts, funnel, fields."""
    from collections import Counter

    n = len(rows)
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"
    by_type = Counter(r.edit_type for r in rows)
    by_origin = Counter(r.origin for r in rows)
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "task_categories:",
        "- image-to-image",
        "tags:",
        "- image-editing",
        "- nhr",
        f"size_categories:\n- {size}",
        "---",
        "",
        f"# {name}",
        "",
        "Image-editing triplets (source image, instruction, edited image) mined by `nhr`, "
        "an open implementation of NoHumansRequired (arXiv 2507.14119), and accepted by "
        "its hard validator (both scores ≥ threshold, argmax of √(adherence·aesthetic) "
        "per source and instruction).",
        "",
        f"**Triplets:** {n}",
        "",
        "## Funnel",
        "",
        "| stage | rows |",
        "|---|---|",
        *[f"| {f['stage']} | {f['rows']} |" for f in funnel],
        "",
        "## Composition",
        "",
        "| origin | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(by_origin.items())],
        "",
        "| edit type | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(by_type.items())],
        "",
        "## Fields",
        "",
        "`source_image`, `edited_image` (images), `instruction`, `edit_type`, `style`, "
        "`width`, `height`, `adherence` and `aesthetic` (validator scores, 1–5), `score` "
        "(√(adherence·aesthetic)), `origin` and `parents` (how the triplet was made), and "
        "provenance: `t2i_model`, `t2i_seed`, `t2i_steps`, `editor_model`, `edit_seed`, "
        "`edit_steps`, `edit_guidance`, `prompter_version`, `judge_id`, "
        "`judge_prompt_version`.",
        "",
        extra,
    ]
    return "\n".join(lines).rstrip() + "\n"


def export_dataset(
    rows: list[TripletRow],
    blobs: BlobStore,
    out_dir: Path,
    card: str,
    shard_rows: int = 1000,
) -> list[Path]:
    """Write the dataset folder (shards + card) and swap it into place; returns shards."""
    import datasets

    datasets.disable_progress_bars()  # the stage draws no bars; the notebook shows the result
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-dataset-", dir=out_dir.parent))
    try:
        features = dataset_features()
        n_shards = max(1, -(-len(rows) // shard_rows))
        (tmp / "data").mkdir()
        for i in range(n_shards):
            part = rows[i * shard_rows : (i + 1) * shard_rows]
            ds = datasets.Dataset.from_dict(_columns(part, blobs), features=features)
            ds.to_parquet(str(tmp / "data" / f"train-{i:05d}-of-{n_shards:05d}.parquet"))
        atomic_write_bytes(tmp / "README.md", card.encode())
        old = out_dir.with_name(f".old-{out_dir.name}")
        if old.exists():
            shutil.rmtree(old)
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted((out_dir / "data").glob("*.parquet"))
