"""The exported dataset's card, written with ``huggingface_hub``'s ``DatasetCard``.

The front matter is a ``DatasetCardData``: the configs and their shard patterns,
``dataset_info`` with every split's ``num_examples`` *and* ``num_bytes`` (``datasets``
warns "The `splits` field in YAML is malformed" and ignores the info without the bytes),
the licence, how the data was made (``annotations_creators``/``source_datasets``:
machine-generated, from which models), and an ``nhr`` block of provenance: the paper,
the run, the models of every role and the count of each origin. ``datasets.load_dataset``
on the folder loads it with no warning about the card.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

PAPER = "arXiv:2507.14119"
# the triplet columns ``provenance`` reads
PROVENANCE_COLUMNS = (
    "origin",
    "t2i_model",
    "editor_model",
    "judge_id",
    "judge_prompt_version",
    "prompter_version",
    "writer_version",
)


def size_category(n: int) -> str:
    """The hub's size bucket of ``n`` rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return name
    return "100K<n<1M" if n < 1_000_000 else "1M<n<10M"


def provenance(
    triplets: pa.Table | Iterable[pa.Table], run: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What made the triplets (a table with their provenance columns, or a stream of
    such tables, so a run's triplets are never held whole): the paper, the run, and the
    model ids of each role."""
    parts = [triplets] if isinstance(triplets, pa.Table) else triplets
    seen: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    for part in parts:
        for name in part.schema.names:
            column = part.column(name)
            values = seen.setdefault(name, set())
            values.update(str(v) for v in pc.unique(pc.drop_null(column)).to_pylist() if v)
            if name == "origin":
                for item in pc.value_counts(column).to_pylist():
                    counts[str(item["values"])] += int(item["counts"])

    def ids(name: str) -> list[str]:
        return sorted(seen.get(name, ()))

    sources = ids("t2i_model")
    photos = sorted({s.split(":", 1)[1] for s in sources if s.startswith("photo:")})
    return {
        "generator": "nhr (NoHumansRequired, open implementation)",
        "paper": PAPER,
        "run": run,
        "source_images": "photos" if photos and len(photos) == len(sources) else "generated",
        "t2i_models": [s for s in sources if not s.startswith("photo:")],
        "photo_collections": photos[:20],
        "editor_models": ids("editor_model"),
        "validators": ids("judge_id"),
        "validator_prompts": ids("judge_prompt_version"),
        "instruction_writers": sorted(set(ids("prompter_version")) | set(ids("writer_version"))),
        "origins": dict(sorted(counts.items())),
        **(extra or {}),
    }


def card_data(
    folder: Path,
    configs: dict[str, Any],
    n_rows: int,
    license_id: str,
    prov: dict[str, Any],
) -> Any:
    """The ``DatasetCardData`` of an export in ``folder`` whose configs are ``{name:
    (shard glob relative to folder, rows)}``, or ``{name: {split: (glob, rows)}}`` for a
    config with several splits; bytes are the parquet shards' on disk."""
    from huggingface_hub import DatasetCardData

    infos = []
    files: dict[str, list[dict[str, str]]] = {}
    for name, value in configs.items():
        splits = value if isinstance(value, dict) else {"train": value}
        entries = []
        for split, (pattern, rows) in splits.items():
            size = sum(p.stat().st_size for p in folder.glob(pattern))
            entries.append({"name": split, "num_bytes": size, "num_examples": rows})
            files.setdefault(name, []).append({"split": split, "path": pattern})
        size = sum(e["num_bytes"] for e in entries)
        infos.append(
            {
                "config_name": name,
                "splits": entries,
                "download_size": size,
                "dataset_size": size,
            }
        )
    return DatasetCardData(
        license=license_id,
        language=["en"],
        pretty_name=prov.get("run") or folder.name,
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=["original"] if prov.get("source_images") != "photos" else ["extended"],
        task_categories=["image-to-image"],
        size_categories=[size_category(n_rows)],
        tags=["image-editing", "nhr", "synthetic"],
        configs=[{"config_name": name, "data_files": files[name]} for name in configs],
        dataset_info=infos,
        nhr=prov,
    )


def write_card(
    folder: Path,
    configs: dict[str, Any],
    n_rows: int,
    body: str,
    license_id: str = "cc-by-4.0",
    prov: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder/README.md``: the card data as front matter, then ``body`` and a
    licence and provenance section; returns the path."""
    from huggingface_hub import DatasetCard

    from nhr.store import atomic_write_bytes

    prov = prov or {}
    data = card_data(Path(folder), configs, n_rows, license_id, prov)
    lines = [
        "",
        "## Licence and provenance",
        "",
        f"Licence: `{license_id}`. Made without human annotation by `nhr`, an open "
        f"implementation of NoHumansRequired ({PAPER}); every row records the models, "
        "seeds and prompt versions that made it.",
    ]
    for key in ("t2i_models", "photo_collections", "editor_models", "validators"):
        if prov.get(key):
            lines.append(f"- {key.replace('_', ' ')}: " + ", ".join(f"`{v}`" for v in prov[key]))
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body.rstrip()}\n" + "\n".join(lines))
    path = Path(folder) / "README.md"
    atomic_write_bytes(path, (str(card).rstrip() + "\n").encode())
    return path
