"""WebDataset shards of an export, beside its parquet: ``webdataset/<prefix>-NNNNN.tar``.

Each sample is one triplet: ``<key>.source.png`` and ``<key>.edited.png`` (the blobs'
PNG bytes as stored, not re-encoded) and ``<key>.json`` (the instruction and every
metadata column of the parquet export). Keys are the triplet ids with the characters
WebDataset splits on (dots, slashes) replaced, so ``wds.WebDataset(urls).decode("pil")``
gives ``{"source.png", "edited.png", "json"}`` per sample.

The tars are written with the standard library's ``tarfile`` exactly as the
``webdataset`` package's ``TarWriter`` (1.0.2, ``webdataset/writer.py``) writes them:
a streamed tar (mode ``w|``, the default PAX format), a sample's members in sorted
order of their extension, each with mode 0o444, owner and group ``bigdata``, the JSON
as ``json.dumps`` in UTF-8. The bytes are the same (tested), without ``import
webdataset``, which imports torch (seconds and ~100 MB of a run's memory).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from nhr.records import TripletRow, from_table
from nhr.store import BlobStore

# every member's modification time: fixed, so the same triplets give the same bytes
# (and a whole number, so a member needs no extra pax header)
TAR_MTIME = 0
TAR_MODE = 0o444  # TarWriter's defaults for a member's mode, owner and group
TAR_OWNER = "bigdata"

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


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One member of a sample, with TarWriter's fixed attributes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = TAR_MODE
    info.uname = info.gname = TAR_OWNER
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(
    rows: Iterable[pa.RecordBatch | pa.Table | TripletRow],
    blobs: BlobStore,
    folder: Path,
    shard_rows: int = 1000,
    prefix: str = "train",
) -> list[Path]:
    """Write the triplets (streamed as record batches of the ``TripletRow`` schema) as tar
    shards of ``shard_rows`` samples into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    file: Any = None
    tar: tarfile.TarFile | None = None
    count = 0
    try:
        for row in _records(rows):
            if tar is None or count == shard_rows:
                if tar is not None:
                    tar.close()
                    file.close()
                shards.append(folder / f"{prefix}-{len(shards):05d}.tar")
                file = shards[-1].open("wb")
                tar = tarfile.open(fileobj=file, mode="w|")
                count = 0
            key = sample_key(row.triplet_id)
            members = {  # in sorted order of the extension, as TarWriter writes them
                "edited.png": blobs.read_bytes(row.edited_image),
                "json": json.dumps(metadata(row)).encode("utf-8"),
                "source.png": blobs.read_bytes(row.source_image),
            }
            for ext, data in members.items():
                add_member(tar, f"{key}.{ext}", data)
            count += 1
    finally:
        if tar is not None:
            tar.close()
        if file is not None:
            file.close()
    return shards
