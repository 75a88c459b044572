"""WebDataset shards of an export, beside its parquet: ``webdataset/<prefix>-NNNNN.tar``.

Each sample is one triplet: ``<key>.source.png`` and ``<key>.edited.png`` (the blobs'
PNG bytes as stored, not re-encoded) and ``<key>.json`` (the instruction and every
metadata column of the parquet export). Keys are the triplet ids with the characters
WebDataset splits on (dots, slashes) replaced, so ``wds.WebDataset(urls).decode("pil")``
gives ``{"source.png", "edited.png", "json"}`` per sample.

The tars hold exactly the bytes the ``webdataset`` package's ``TarWriter`` (1.0.2,
``webdataset/writer.py``) writes: a stream through the standard library's ``tarfile``
(mode ``w|``, its default PAX format), a sample's members in sorted order of their
extension, each with mode 0o444, owner and group ``bigdata``, the JSON as
``json.dumps`` in UTF-8 (tested byte for byte). They are written here without
``import webdataset``, which imports torch (seconds and ~100 MB of a run's memory),
and a member whose name fits the ustar header (every sample key does) gets that
header built from a template: the header ``tarfile`` builds for it, at a fraction of
the cost (``tarfile`` checks every field for a PAX record and sums the checksum in
Python, which made the tars most of a large export's time).
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from nhr.records import TripletRow
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


def _samples(
    rows: Iterable[pa.RecordBatch | pa.Table | TripletRow],
) -> Iterator[tuple[dict[str, Any], str, str]]:
    """Each triplet's JSON metadata (``metadata``), source and edited image, read
    column-wise from record batches (or from records), one batch in memory at a time."""
    fields = list(META_FIELDS)
    for item in rows:
        if isinstance(item, TripletRow):
            yield metadata(item), item.source_image, item.edited_image
            continue
        yield from zip(
            item.select(fields).to_pylist(),
            item.column("source_image").to_pylist(),
            item.column("edited_image").to_pylist(),
            strict=True,
        )


# a member's ustar header as tarfile writes it (``TarInfo._create_header``), less its
# name, size and checksum: mode, owner ids 0, mtime, type "0" (a file), magic, names
_HEADER = bytearray(
    b"".join(
        [
            bytes(100),  # name
            b"%07o\0" % TAR_MODE,
            b"%07o\0" % 0,  # uid
            b"%07o\0" % 0,  # gid
            bytes(12),  # size
            b"%011o\0" % TAR_MTIME,
            b" " * 8,  # the checksum, as spaces while it is summed
            tarfile.REGTYPE,
            bytes(100),  # linkname
            tarfile.POSIX_MAGIC,
            TAR_OWNER.encode().ljust(32, b"\0"),
            TAR_OWNER.encode().ljust(32, b"\0"),
            bytes(16),  # devmajor, devminor
            bytes(155),  # prefix
        ]
    ).ljust(tarfile.BLOCKSIZE, b"\0")
)
_MAX_SIZE = 8**11 - 1  # what the ustar size field holds


def member_header(name: str, size: int) -> bytes:
    """The header ``tarfile`` (PAX format) writes for a member of TarWriter's attributes:
    from the template when the name and size fit the ustar fields (no PAX record), else
    from ``tarfile`` itself."""
    raw = name.encode("utf-8")
    if not name.isascii() or len(raw) > tarfile.LENGTH_NAME or size > _MAX_SIZE:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, TAR_MTIME, TAR_MODE
        info.uname = info.gname = TAR_OWNER
        return info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    buf = _HEADER.copy()
    buf[: len(raw)] = raw
    buf[124:136] = b"%011o\0" % size
    buf[148:155] = b"%06o\0" % sum(buf)  # tarfile's checksum: 6 digits, NUL, a space
    return bytes(buf)


class TarShard:
    """One tar file written as ``tarfile.open(mode="w|")`` writes it: each member a
    header and its data padded to a block, then two zero blocks, the whole padded to a
    record (``tarfile.RECORDSIZE``)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb", buffering=1 << 20)
        self.offset = 0

    def add(self, name: str, data: bytes) -> None:
        """Append one member."""
        header = member_header(name, len(data))
        pad = -len(data) % tarfile.BLOCKSIZE
        self.file.write(header)
        self.file.write(data)
        self.file.write(bytes(pad))
        self.offset += len(header) + len(data) + pad

    def close(self) -> None:
        """The end-of-archive blocks and the record padding; closes the file."""
        end = 2 * tarfile.BLOCKSIZE
        self.file.write(bytes(end + (-(self.offset + end) % tarfile.RECORDSIZE)))
        self.file.close()


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
    tar: TarShard | None = None
    count = 0
    try:
        for meta, source, edited in _samples(rows):
            if tar is None or count == shard_rows:
                if tar is not None:
                    tar.close()
                shards.append(folder / f"{prefix}-{len(shards):05d}.tar")
                tar = TarShard(shards[-1])
                count = 0
            key = sample_key(meta["triplet_id"])
            # in sorted order of the extension, as TarWriter writes a sample
            tar.add(f"{key}.edited.png", blobs.read_bytes(edited))
            tar.add(f"{key}.json", json.dumps(meta).encode("utf-8"))
            tar.add(f"{key}.source.png", blobs.read_bytes(source))
            count += 1
    finally:
        if tar is not None:
            tar.close()
    return shards
