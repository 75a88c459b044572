"""WebDataset shards of an export, beside its parquet: ``webdataset/<prefix>-NNNNN.tar``.

Each sample is one triplet: ``<key>.source.png`` and ``<key>.edited.png`` (the blobs'
PNG bytes as stored, not re-encoded) and ``<key>.json`` (the instruction and every
metadata column of the parquet export). Keys are the triplet ids with the characters
WebDataset splits on (dots, slashes) replaced, so ``wds.WebDataset(urls).decode("pil")``
gives ``{"source.png", "edited.png", "json"}`` per sample. Written with the
``webdataset`` package's ``TarWriter``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from nhr.errors import BackendError
from nhr.records import TripletRow, from_table
from nhr.store import BlobStore

# every member's modification time: fixed, so the same triplets give the same bytes
# (and a whole number, so a member needs no extra pax header)
TAR_MTIME = 0

META_FIELDS = (
    "triplet_id",
    "origin",
    "parents",
    "instruction",
    "edit_type",
    "style",
    "width",
    "height",
    "adherence",
    "aesthetic",
    "score",
    "prompt",
    "prompt_id",
    "source_id",
    "candidate_id",
    "t2i_model",
    "t2i_seed",
    "t2i_steps",
    "editor_model",
    "edit_seed",
    "edit_steps",
    "edit_guidance",
    "prompter_version",
    "writer_version",
    "judge_id",
    "judge_prompt_version",
)


def sample_key(triplet_id: str) -> str:
    """A WebDataset key for a triplet id (no dots or slashes, which split keys)."""
    return re.sub(r"[^\w-]", "_", triplet_id)


def metadata(row: TripletRow) -> dict[str, Any]:
    """The JSON metadata of one sample."""
    out = {name: getattr(row, name) for name in META_FIELDS}
    out["parents"] = list(row.parents)
    return out


def _records(rows: Iterable[pa.RecordBatch | pa.Table | TripletRow]) -> Iterator[TripletRow]:
    """Triplet records from record batches (or records), one batch in memory at a time."""
    for item in rows:
        if isinstance(item, TripletRow):
            yield item
        else:
            yield from from_table(item, TripletRow)


def write_webdataset(
    rows: Iterable[pa.RecordBatch | pa.Table | TripletRow],
    blobs: BlobStore,
    folder: Path,
    shard_rows: int = 1000,
    prefix: str = "train",
) -> list[Path]:
    """Write the triplets (streamed as record batches of the ``TripletRow`` schema) as tar
    shards of ``shard_rows`` samples into ``folder``."""
    try:
        import webdataset as wds
    except ImportError:
        raise BackendError(
            "the dependency 'webdataset' is not installed",
            "install it with `pip install webdataset==1.0.2`, or set EXPORT_WEBDATASET False",
        ) from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    writer: Any = None
    count = 0
    try:
        for row in _records(rows):
            if writer is None or count == shard_rows:
                if writer is not None:
                    writer.close()
                shards.append(folder / f"{prefix}-{len(shards):05d}.tar")
                writer = wds.TarWriter(str(shards[-1]), mtime=TAR_MTIME)
                count = 0
            writer.write(
                {
                    "__key__": sample_key(row.triplet_id),
                    "source.png": blobs.read_bytes(row.source_image),
                    "edited.png": blobs.read_bytes(row.edited_image),
                    "json": metadata(row),
                }
            )
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return shards
