"""Stage 11: export accepted triplets as a Hugging Face dataset folder.

The folder holds parquet shards with the images embedded (``datasets.Image`` columns,
so the dataset travels without its run folder) and a dataset card ``README.md`` whose
front matter declares the configs — ``default`` (one triplet a row) and, when there are
chains, ``multiturn`` (I0 → Ie1 → Ie2 … with their instructions) — so
``datasets.load_dataset(folder)`` loads it as is.

With a test share (``EXPORT_TEST_SHARE`` > 0) the ``default`` config gets two splits,
``train`` and ``test``, drawn by source: every triplet of one source image (mined,
inverse, composed) lands in the same split, so no source of the test split is seen in
training; the draw is a hash of the source id, stable across reruns and run sizes.

Shard names carry a fingerprint of their content (``train-<fp>-00000-of-00002.parquet``)
and the card's patterns name it: ``datasets`` caches a local folder by its card's
patterns, so without it a re-export into the same path would load the stale cache.
On a path the folder is built beside the old one and swapped in with renames, so an
interrupted export never leaves half a dataset; on an object store (no rename) it is
built in a local temp folder and uploaded with its card last (``RunStore.put_folder``):
the card names the new content-named shards, so a reader never sees a mix. Rows stream
through: the triplets are read in batches and each shard embeds its own images only, so
memory holds one shard at a time whatever the size of the run.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nhr.stages.dataset_card import write_card
from nhr.stages.export_webdataset import write_webdataset
from nhr.store import BlobStore, RunStore, is_url, open_files

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


def _images(blobs: BlobStore, rels: list[str]) -> list[dict[str, Any]]:
    """Embedded image cells: the PNG bytes, named by their hash."""
    return [{"bytes": blobs.read_bytes(rel), "path": Path(rel).name} for rel in rels]


IMAGE_COLUMNS = {
    "default": ("source_image", "edited_image"),
    "preference": ("source_image", "chosen_image", "rejected_image"),
}


def _shard_table(config: str, part: pa.Table, blobs: BlobStore, features: Any) -> pa.Table:
    """One shard of a config with its images embedded, typed by its features."""
    schema = features.arrow_schema
    columns = []
    for field in schema:
        if field.name in IMAGE_COLUMNS.get(config, ()):
            values = _images(blobs, part.column(field.name).to_pylist())
        elif config == "multiturn" and field.name == "images":
            values = [_images(blobs, rels) for rels in part.column("images").to_pylist()]
        elif config == "multiturn" and field.name == "turns":
            values = [len(i) for i in part.column("instructions").to_pylist()]
        else:
            columns.append(part.column(field.name).cast(field.type))
            continue
        columns.append(pa.array(values, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _rechunk(batches: Iterable[pa.RecordBatch | pa.Table], rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last one shorter) from a stream of batches."""
    pending: list[pa.Table] = []
    held = 0
    for batch in batches:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        pending.append(table)
        held += table.num_rows
        while held >= rows:
            whole = pa.concat_tables(pending)
            yield whole.slice(0, rows)
            rest = whole.slice(rows)
            pending, held = [rest], rest.num_rows
    if held:
        yield pa.concat_tables(pending)


def _digest(digest: Any, part: pa.Table) -> None:
    """Feed what a shard holds (every column but the embedded bytes) into ``digest``."""
    for name in sorted(part.column_names):
        digest.update(name.encode())
        digest.update(json.dumps(part.column(name).to_pylist(), default=str).encode())


def _pct(change: float | None) -> str:
    """A change as a signed percentage, or empty."""
    return "" if change is None else f"{change:+.1%}"


def _num(value: Any, digits: int = 4) -> str:
    """A figure for the card (— when unknown)."""
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def cost_lines(cost: dict[str, Any] | None) -> list[str]:
    """The card's cost section: per accepted forward (mined) triplet, generations, judge
    calls, editor and T2I GPU-seconds, API dollars and the editor's busy share."""
    if not cost:
        return []
    calls = cost.get("judge_calls") or {}
    judged = [calls.get(n) for n in ("prefilter", "validator") if calls.get(n) is not None]
    rows = [
        ("generations (edits made)", cost.get("generations"), cost.get("generations_per_triplet")),
        (
            "judge calls (pre-filter + hard validator)",
            sum(judged) if judged else None,
            cost.get("judge_calls_per_triplet"),
        ),
        ("plausibility gate calls", calls.get("gate"), cost.get("gate_calls_per_triplet")),
        (
            "editor GPU-seconds",
            cost.get("editor_gpu_seconds"),
            cost.get("editor_gpu_seconds_per_triplet"),
        ),
        ("T2I GPU-seconds", cost.get("t2i_gpu_seconds"), cost.get("t2i_gpu_seconds_per_triplet")),
        ("API dollars", cost.get("api_usd"), cost.get("api_usd_per_triplet")),
    ]
    share = cost.get("editor_busy_share")
    return [
        "## Cost",
        "",
        f"Per accepted forward triplet ({_num(cost.get('triplets'))} mined triplets):",
        "",
        "| measure | run | per triplet |",
        "|---|---|---|",
        *[f"| {name} | {_num(total)} | {_num(per)} |" for name, total, per in rows],
        "",
        "Editor busy share of the mining wall time: "
        + ("— (not recorded)" if share is None else f"{share:.1%}")
        + ".",
        "",
    ]


def card_body(
    name: str,
    by_origin: dict[str, int],
    by_type: dict[str, int],
    funnel: list[dict[str, Any]],
    chains: int,
    preferences: int = 0,
    cost: dict[str, Any] | None = None,
) -> str:
    """The dataset card's text: what it is, counts (triplets by origin and by edit type),
    the funnel, what a mined triplet cost (``nhr.summary.cost_per_triplet``), fields."""
    rows = sum(by_origin.values())
    lines = [
        f"# {name}",
        "",
        "Image-editing triplets (source image, instruction, edited image) mined by `nhr`, "
        "an open implementation of NoHumansRequired (arXiv 2507.14119), and accepted by "
        "its hard validator (both scores ≥ threshold, argmax of √(adherence·aesthetic) "
        "per source and instruction).",
        "",
        f"**Triplets:** {rows} (config `default`); **multi-turn chains:** {chains} "
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
        *cost_lines(cost),
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
    """The front matter of an exported dataset's card (a folder or an object-store URL)."""
    import yaml

    text = open_files(folder).read_bytes("README.md").decode()
    if not text.startswith("---"):
        return {}
    return yaml.safe_load(text.split("---", 2)[1]) or {}


def test_mask(source_ids: pa.Array | pa.ChunkedArray, share: float) -> np.ndarray:
    """Which rows go to the test split: a ``share`` of sources, drawn by a hash of the
    source id (the same source always lands in the same split)."""
    ids = source_ids.to_pylist()
    if share <= 0.0:
        return np.zeros(len(ids), bool)
    unit = np.array(
        [int(hashlib.sha256(f"test-split:{i}".encode()).hexdigest()[:12], 16) for i in ids],
        np.float64,
    )
    return unit / float(16**12) < share


def split_rows(
    rows: Iterable[pa.RecordBatch | pa.Table], share: float
) -> dict[str, Iterable[pa.RecordBatch | pa.Table]]:
    """The triplet stream as ``{"train": ..., "test": ...}`` by source (``test_mask``);
    the triplets (image paths only) are held in memory once to split them."""
    batches = [b if isinstance(b, pa.Table) else pa.Table.from_batches([b]) for b in rows]
    if not batches:
        return {"train": [], "test": []}
    table = pa.concat_tables(batches)
    mask = test_mask(table.column("source_id"), share)
    return {"train": [table.filter(pa.array(~mask))], "test": [table.filter(pa.array(mask))]}


def load_export(folder: Path | str, config: str = "default", split: str = "train") -> Any:
    """Load an exported dataset's config as a ``datasets.Dataset`` (one split: ``train``,
    or ``test`` where the export has one).

    ``datasets.load_dataset`` refuses an empty split, so a config the card records with
    zero rows comes back as an empty dataset with the right features instead. An export
    on an object store (``s3://…/dataset``) is read through pyarrow.fs like the rest of
    the run folder: the shards its card names are fetched into a temp folder, loaded
    (``datasets`` copies them into its cache) and deleted, so no fsspec driver is needed.
    """
    import datasets

    infos = {i["config_name"]: i for i in read_card(folder).get("dataset_info", [])}
    if config not in infos:
        raise ValueError(f"{folder} has no config {config!r}; it has {sorted(infos)}")
    splits = {s["name"]: s for s in infos[config]["splits"]}
    if split not in splits:
        raise ValueError(
            f"{folder} config {config!r} has no split {split!r}; it has {sorted(splits)} "
            "(a test split is exported with EXPORT_TEST_SHARE > 0)"
        )
    if splits[split]["num_examples"] == 0:
        features = CONFIGS[config][1]()
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    if is_url(folder):
        return _load_remote(str(folder), config, datasets, split)
    return datasets.load_dataset(str(folder), config, split=split)


def _load_remote(url: str, config: str, datasets: Any, split: str = "train") -> Any:
    """One config of an export on an object store, as ``load_export`` returns it."""
    files = open_files(url)
    card = {c["config_name"]: c for c in read_card(url).get("configs", [])}
    files_of = {f["split"]: f["path"] for f in card[config]["data_files"]}
    pattern = files_of[split]  # data/<prefix>-<fp>-*.parquet
    folder, glob = pattern.rsplit("/", 1)
    names = sorted(n for n, _ in files.listdir(folder) if fnmatch.fnmatch(n, glob))
    with tempfile.TemporaryDirectory(prefix="nhr-load-") as tmp:
        local = []
        for name in names:
            (Path(tmp) / name).write_bytes(files.read_bytes(f"{folder}/{name}"))
            local.append(str(Path(tmp) / name))
        return datasets.load_dataset("parquet", data_files={"train": local}, split="train")


def split_files(value: tuple[str, int] | dict[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """A config's ``{split: (shard glob, rows)}``: one ``train`` split, or several."""
    return dict(value) if isinstance(value, dict) else {"train": value}


# config name → (shard prefix, features)
CONFIGS: dict[str, tuple[str, Callable[[], Any]]] = {
    "default": ("train", triplet_features),
    "multiturn": ("multiturn", chain_features),
    "preference": ("preference", preference_features),
}


def _write_config(
    tmp: Path,
    config: str,
    batches: Iterable[pa.RecordBatch | pa.Table],
    blobs: BlobStore,
    shard_rows: int,
    split: str = "",
) -> tuple[str, int]:
    """Stream one config's rows into shards in ``tmp/data``, one shard's images in memory
    at a time; returns its glob pattern and its row count. Shards are written under
    temporary names and renamed once the content fingerprint is known. ``split`` (of
    a config with several) names the shards (``test-<fp>-…``)."""
    prefix, features = CONFIGS[config]
    prefix = split or prefix
    feats = features()
    digest = hashlib.sha256()
    written: list[Path] = []
    rows = 0
    for part in _rechunk(batches, shard_rows):
        _digest(digest, part)
        path = tmp / "data" / f".{prefix}-{len(written):05d}.parquet"
        pq.write_table(_shard_table(config, part, blobs, feats), path)
        written.append(path)
        rows += part.num_rows
    if not written:  # an empty config still gets one (empty) shard
        pq.write_table(feats.arrow_schema.empty_table(), tmp / "data" / f".{prefix}-00000.parquet")
        written.append(tmp / "data" / f".{prefix}-00000.parquet")
    fp = digest.hexdigest()[:12]
    for i, path in enumerate(written):
        path.rename(tmp / "data" / f"{prefix}-{fp}-{i:05d}-of-{len(written):05d}.parquet")
    return f"data/{prefix}-{fp}-*.parquet", rows


def export_dataset(
    rows: Iterable[pa.RecordBatch | pa.Table],
    blobs: BlobStore,
    out_dir: Path,
    body: str | Callable[[dict[str, int]], str],
    shard_rows: int = 1000,
    chains: pa.Table | Iterable[pa.Table] | None = None,
    preferences: pa.Table | Iterable[pa.Table] | None = None,
    webdataset_rows: Iterable[pa.RecordBatch | pa.Table] | None = None,
    webdataset_shard_rows: int = 1000,
    license_id: str = "cc-by-4.0",
    provenance: dict[str, Any] | None = None,
    test_share: float = 0.0,
) -> list[Path]:
    """Write the dataset folder (shards + card, and WebDataset tar shards of the triplets
    when ``webdataset_rows`` is given) and swap it into place; returns the parquet shards.

    ``rows`` (and ``webdataset_rows``, a second pass over the same table) stream the
    triplets as record batches of the ``TripletRow`` schema; ``chains`` (from
    ``bootstrap.chains``, or its slices as ``bootstrap.iter_chains`` gives them) and
    ``preferences`` (from ``preference_pairs``, or its slices as
    ``iter_preference_pairs`` gives them) are tables of image paths, embedded shard by
    shard. ``body`` is the card's text, or a function of the rows each config got
    (``{"default": n, "multiturn": n, "preference": n}``) that gives it once they are
    written. ``test_share`` > 0 splits ``default`` into ``train`` and ``test`` by
    source (see the module docstring)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-dataset-", dir=out_dir.parent))
    try:
        (tmp / "data").mkdir()
        parts: dict[str, Iterable[pa.RecordBatch | pa.Table]] = {
            "default": rows,
            "multiturn": _tables(chains),
            "preference": _tables(preferences),
        }
        configs: dict[str, Any] = {}
        for name, part in parts.items():
            if name == "default" and test_share > 0.0:
                by_split = split_rows(part, test_share)
                configs[name] = {
                    split: _write_config(tmp, name, rows_, blobs, shard_rows, split)
                    for split, rows_ in by_split.items()
                }
            else:
                configs[name] = _write_config(tmp, name, part, blobs, shard_rows)
        rows = {n: sum(r for _, r in split_files(c).values()) for n, c in configs.items()}
        text = body(rows) if callable(body) else body
        write_card(tmp, configs, rows["default"], text, license_id, provenance)
        if webdataset_rows is not None:
            write_webdataset(webdataset_rows, blobs, tmp / "webdataset", webdataset_shard_rows)
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


def _tables(given: pa.Table | Iterable[pa.Table] | None) -> Iterable[pa.Table]:
    """A config's rows as tables: none, one table, or the tables given."""
    if given is None:
        return []
    return [given] if isinstance(given, pa.Table) else given


def export_to_store(
    store: RunStore,
    rel: str,
    rows: Iterable[pa.RecordBatch | pa.Table],
    body: str | Callable[[dict[str, int]], str],
    shard_rows: int = 1000,
    chains: pa.Table | Iterable[pa.Table] | None = None,
    preferences: pa.Table | Iterable[pa.Table] | None = None,
    webdataset_rows: Iterable[pa.RecordBatch | pa.Table] | None = None,
    webdataset_shard_rows: int = 1000,
    license_id: str = "cc-by-4.0",
    provenance: dict[str, Any] | None = None,
    test_share: float = 0.0,
) -> list[str]:
    """``export_dataset`` into the folder ``rel`` of a run folder (a path or an object
    store, see the module docstring); returns the parquet shards relative to the run."""
    args = (
        chains,
        preferences,
        webdataset_rows,
        webdataset_shard_rows,
        license_id,
        provenance,
        test_share,
    )
    local = store.local_path(rel)
    if local is not None:
        shards = export_dataset(rows, store.blobs, local, body, shard_rows, *args)
        return [f"{rel}/data/{p.name}" for p in shards]
    with tempfile.TemporaryDirectory(prefix="nhr-export-") as tmp:
        folder = Path(tmp) / "dataset"
        shards = export_dataset(rows, store.blobs, folder, body, shard_rows, *args)
        store.put_folder(folder, rel)
        return [f"{rel}/data/{p.name}" for p in shards]
