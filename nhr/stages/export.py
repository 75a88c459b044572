"""Stage 11: export accepted triplets as a Hugging Face dataset folder.

The folder holds parquet shards with the images embedded (``datasets.Image`` columns,
so the dataset travels without its run folder) and a dataset card ``README.md`` whose
front matter declares the configs — ``default`` (one triplet a row) and, when there are
chains, ``multiturn`` (I0 → Ie1 → Ie2 … with their instructions) — so
``datasets.load_dataset(folder)`` loads it as is.

Shard names carry a fingerprint of their content (``train-<fp>-00000-of-00002.parquet``)
and the card's patterns name it: ``datasets`` caches a local folder by its card's
patterns, so without it a re-export into the same path would load the stale cache.
The folder is built beside the old one and swapped in with renames, so an interrupted
export never leaves half a dataset.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.records import TripletRow
from nhr.stages.preference import PreferencePair
from nhr.store import BlobStore

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
    "writer_version",
    "judge_id",
    "judge_prompt_version",
)
INT_COLUMNS = ("width", "height", "t2i_seed", "t2i_steps", "edit_seed", "edit_steps")
FLOAT_COLUMNS = ("adherence", "aesthetic", "score", "edit_guidance")


@dataclass(frozen=True)
class Chain:
    """A multi-turn sequence: images I0, Ie1, … and the instruction of each turn."""

    chain_id: str
    images: tuple[str, ...]
    instructions: tuple[str, ...]
    triplet_ids: tuple[str, ...]
    width: int
    height: int


def triplet_features() -> Any:
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


def chain_features() -> Any:
    """The ``datasets.Features`` of an exported multi-turn chain."""
    import datasets

    return datasets.Features(
        {
            "chain_id": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Image()),
            "instructions": datasets.Sequence(datasets.Value("string")),
            "triplet_ids": datasets.Sequence(datasets.Value("string")),
            "turns": datasets.Value("int64"),
            "width": datasets.Value("int64"),
            "height": datasets.Value("int64"),
        }
    )


def preference_features() -> Any:
    """The ``datasets.Features`` of an exported preference pair."""
    import datasets

    feats: dict[str, Any] = {
        name: datasets.Image() for name in ("source_image", "chosen_image", "rejected_image")
    }
    for name in (
        "pair_id",
        "triplet_id",
        "rejected_candidate_id",
        "instruction",
        "rejected_stage",
        "rejected_reason",
    ):
        feats[name] = datasets.Value("string")
    for name in (
        "chosen_adherence",
        "chosen_aesthetic",
        "rejected_adherence",
        "rejected_aesthetic",
    ):
        feats[name] = datasets.Value("float64")
    feats["width"] = datasets.Value("int64")
    feats["height"] = datasets.Value("int64")
    return datasets.Features(feats)


def _preference_columns(rows: list[PreferencePair], blobs: BlobStore) -> dict[str, list[Any]]:
    """Column lists for a shard of preference pairs."""
    images = ("source_image", "chosen_image", "rejected_image")
    cols: dict[str, list[Any]] = {
        name: [_image(blobs, getattr(r, name)) for r in rows] for name in images
    }
    for name in preference_features():
        if name not in images:
            cols[name] = [getattr(r, name) for r in rows]
    return cols


def _image(blobs: BlobStore, rel: str) -> dict[str, Any]:
    """An embedded image cell: the PNG bytes, named by their hash."""
    return {"bytes": blobs.read_bytes(rel), "path": Path(rel).name}


def _triplet_columns(rows: list[TripletRow], blobs: BlobStore) -> dict[str, list[Any]]:
    """Column lists for a shard of triplets."""
    cols: dict[str, list[Any]] = {
        "source_image": [_image(blobs, r.source_image) for r in rows],
        "edited_image": [_image(blobs, r.edited_image) for r in rows],
    }
    for name in TEXT_COLUMNS + INT_COLUMNS + FLOAT_COLUMNS:
        cols[name] = [getattr(r, name) for r in rows]
    cols["parents"] = [list(r.parents) for r in rows]
    return cols


def _chain_columns(rows: list[Chain], blobs: BlobStore) -> dict[str, list[Any]]:
    """Column lists for a shard of chains."""
    return {
        "chain_id": [c.chain_id for c in rows],
        "images": [[_image(blobs, rel) for rel in c.images] for c in rows],
        "instructions": [list(c.instructions) for c in rows],
        "triplet_ids": [list(c.triplet_ids) for c in rows],
        "turns": [len(c.instructions) for c in rows],
        "width": [c.width for c in rows],
        "height": [c.height for c in rows],
    }


def fingerprint(rows: list[Any]) -> str:
    """A short hash of what a config's rows hold (ids, images, instructions, scores)."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(repr(sorted(vars(r).items())).encode())
    return digest.hexdigest()[:12]


def _pct(change: float | None) -> str:
    """A change as a signed percentage, or empty."""
    return "" if change is None else f"{change:+.1%}"


def card_body(
    name: str,
    rows: list[TripletRow],
    funnel: list[dict[str, Any]],
    chains: int,
    preferences: int = 0,
) -> str:
    """The dataset card's text: what it is, counts, the funnel, fields."""
    by_type = Counter(r.edit_type for r in rows)
    by_origin = Counter(r.origin for r in rows)
    lines = [
        f"# {name}",
        "",
        "Image-editing triplets (source image, instruction, edited image) mined by `nhr`, "
        "an open implementation of NoHumansRequired (arXiv 2507.14119), and accepted by "
        "its hard validator (both scores ≥ threshold, argmax of √(adherence·aesthetic) "
        "per source and instruction).",
        "",
        f"**Triplets:** {len(rows)} (config `default`); **multi-turn chains:** {chains} "
        f"(config `multiturn`); **preference pairs:** {preferences} (config `preference`)",
        "",
        "## Funnel",
        "",
        "| stage | rows | change | paper (Table 2) |",
        "|---|---|---|---|",
        *[
            f"| {f['stage']} | {f['rows']} | {_pct(f.get('change'))} | "
            f"{_pct(f.get('paper_change'))} |"
            for f in funnel
        ],
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
        "(√(adherence·aesthetic)), `origin` (mined, inverted, composed) and `parents` (the "
        "ids it was made from), and provenance: `t2i_model`, `t2i_seed`, `t2i_steps`, "
        "`editor_model`, `edit_seed`, `edit_steps`, `edit_guidance`, `prompter_version`, "
        "`writer_version` (who wrote the instruction), `judge_id`, `judge_prompt_version`.",
    ]
    lines += [
        "",
        "The `multiturn` config holds chains I0 → Ie1 → Ie2 …: `images` (turns + 1 "
        "images), `instructions` (one per turn), `triplet_ids` (the triplet of each turn).",
        "",
        "The `preference` config pairs each mined triplet's accepted edit (`chosen_image`) "
        "with a rejected edit of the same source and instruction (`rejected_image`), the "
        "hardest first, with the stage and reason that rejected it and its scores, for "
        "preference and reward-model training.",
    ]
    return "\n".join(lines) + "\n"


def read_card(folder: Path | str) -> dict[str, Any]:
    """The front matter of an exported dataset's card."""
    import yaml

    text = (Path(folder) / "README.md").read_text()
    if not text.startswith("---"):
        return {}
    return yaml.safe_load(text.split("---", 2)[1]) or {}


def load_export(folder: Path | str, config: str = "default") -> Any:
    """Load an exported dataset's config as a ``datasets.Dataset`` (train split).

    ``datasets.load_dataset`` refuses an empty split, so a config the card records with
    zero rows comes back as an empty dataset with the right features instead.
    """
    import datasets

    infos = {i["config_name"]: i for i in read_card(folder).get("dataset_info", [])}
    if config not in infos:
        raise ValueError(f"{folder} has no config {config!r}; it has {sorted(infos)}")
    if infos[config]["splits"][0]["num_examples"] == 0:
        features = CONFIGS[config][2]()
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.load_dataset(str(folder), config, split="train")


# config name → (shard prefix, column builder, features)
CONFIGS: dict[str, tuple[str, Callable[[list[Any], BlobStore], dict[str, list[Any]]], Any]] = {
    "default": ("train", _triplet_columns, triplet_features),
    "multiturn": ("multiturn", _chain_columns, chain_features),
    "preference": ("preference", _preference_columns, preference_features),
}


def _write_config(
    tmp: Path, config: str, rows: list[Any], blobs: BlobStore, shard_rows: int
) -> str:
    """Write one config's shards into ``tmp/data``; returns its glob pattern."""
    import datasets

    prefix, columns, features = CONFIGS[config]
    fp = fingerprint(rows)
    n_shards = max(1, -(-len(rows) // shard_rows))
    for i in range(n_shards):
        part = rows[i * shard_rows : (i + 1) * shard_rows]
        ds = datasets.Dataset.from_dict(columns(part, blobs), features=features())
        ds.to_parquet(str(tmp / "data" / f"{prefix}-{fp}-{i:05d}-of-{n_shards:05d}.parquet"))
    return f"data/{prefix}-{fp}-*.parquet"


def export_dataset(
    rows: list[TripletRow],
    blobs: BlobStore,
    out_dir: Path,
    body: str,
    shard_rows: int = 1000,
    chains: list[Chain] | None = None,
    preferences: list[PreferencePair] | None = None,
    webdataset_shard_rows: int = 0,
    license_id: str = "cc-by-4.0",
    provenance: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the dataset folder (shards + card, and WebDataset tar shards of the triplets
    when ``webdataset_shard_rows`` > 0) and swap it into place; returns the parquet shards."""
    import datasets

    from nhr.stages.dataset_card import write_card

    datasets.disable_progress_bars()  # the stage draws no bars; the notebook shows the result
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-dataset-", dir=out_dir.parent))
    try:
        (tmp / "data").mkdir()
        chains = chains or []
        parts = {"default": rows, "multiturn": chains, "preference": preferences or []}
        configs = {
            name: (_write_config(tmp, name, part, blobs, shard_rows), len(part))
            for name, part in parts.items()
        }
        write_card(tmp, configs, len(rows), body, license_id, provenance)
        if webdataset_shard_rows:
            from nhr.stages.export_webdataset import write_webdataset

            write_webdataset(rows, blobs, tmp / "webdataset", webdataset_shard_rows)
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
