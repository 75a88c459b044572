"""Photo collections: where photo sources come from, read by index.

``open_collection(location, column, split)`` understands

- a folder of image files (every file but metadata, text and archives; sorted by path,
  so a file's index is stable; odd files are listed too and refused by the loader);
- an imagefolder: a folder with ``metadata.jsonl`` or ``metadata.csv`` whose
  ``file_name`` (or ``column``) names each image;
- a parquet file or folder of parquet files, the photo in ``column`` (default: the first
  column holding image structs ``{"bytes", "path"}`` or binary);
- WebDataset shards: a ``.tar`` file, a folder of them, or a brace pattern
  ``shards-{000..009}.tar``; a sample is the members sharing a key, the photo the member
  whose extension is ``column`` (default: the first image extension);
- a Hugging Face hub id ``owner/name`` (downloaded once into the HF cache, split
  ``split``; images read undecoded, so the one loader decodes them).

Each entry is handed to the loader raw (a path or bytes): reading never decodes.
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nhr.errors import NhrError

METADATA_FILES = ("metadata.jsonl", "metadata.csv")
SKIP_SUFFIXES = {".json", ".jsonl", ".csv", ".txt", ".md", ".parquet", ".tar", ".yaml", ".py"}
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm")


class CollectionError(NhrError):
    """A photo collection cannot be found or read, or lacks the photo column."""


@dataclass
class PhotoCollection:
    """A photo collection: ``len(c)`` entries, ``c.name(i)`` a stable label of each,
    ``c.raw(i)`` its undecoded photo (a path or bytes; None when the entry has none)."""

    location: str
    kind: str
    names: list[str]
    reader: Callable[[int], Path | bytes | None]

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        """The entry's label: a relative path, ``shard.tar:key`` or ``row N``."""
        return self.names[i]

    def raw(self, i: int) -> Path | bytes | None:
        """The undecoded photo of entry ``i``."""
        return self.reader(i)


def _cell_bytes(value: Any, base: Path | None) -> Path | bytes | None:
    """An image cell (struct with bytes/path, bytes, or a path string) → bytes or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value)
        return path if path.is_absolute() or base is None else base / path
    return None


def _folder(path: Path) -> PhotoCollection:
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and p.suffix.lower() not in SKIP_SUFFIXES
        and not p.name.lower().startswith("readme")
    )
    names = [p.relative_to(path).as_posix() for p in files]
    return PhotoCollection(str(path), "folder", names, lambda i: files[i])


def is_imagefolder(path: Path) -> bool:
    """Whether ``path`` is a folder with an imagefolder's metadata file."""
    return path.is_dir() and any((path / m).is_file() for m in METADATA_FILES)


def read_metadata(folder: Path, error: type[NhrError] = CollectionError) -> list[dict[str, Any]]:
    """The rows of an imagefolder's ``metadata.jsonl`` (preferred) or ``metadata.csv``;
    a line that is not JSON raises ``error``."""
    jsonl, csv_path = folder / "metadata.jsonl", folder / "metadata.csv"
    if not jsonl.is_file():
        with csv_path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    rows = []
    for i, line in enumerate(jsonl.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise error(f"{jsonl} line {i} is not JSON", "fix or remove that line") from None
    return rows


def _imagefolder(path: Path, column: str) -> PhotoCollection:
    rows = read_metadata(path)
    key = column or "file_name"
    if rows and key not in rows[0]:
        raise CollectionError(
            f"photo collection {path}: metadata has no column {key!r} (it has {list(rows[0])})",
            "name the image column with PHOTOS_COLUMN",
        )
    cells = [r.get(key) for r in rows]
    names = [str(c) if isinstance(c, str) else f"row {i}" for i, c in enumerate(cells)]
    return PhotoCollection(str(path), "imagefolder", names, lambda i: _cell_bytes(cells[i], path))


def _image_column(schema: Any, column: str, where: str) -> str:
    import pyarrow as pa

    if column:
        if column not in schema.names:
            raise CollectionError(
                f"photo collection {where} has no column {column!r} (it has {schema.names})",
                "set PHOTOS_COLUMN to the column holding the photos",
            )
        return column
    for f in schema:
        t = f.type
        if pa.types.is_struct(t) and "bytes" in [t.field(i).name for i in range(t.num_fields)]:
            return f.name
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return f.name
    raise CollectionError(
        f"photo collection {where} has no image column (columns: {schema.names})",
        "set PHOTOS_COLUMN to the column holding the photos",
    )


def _parquet(path: Path, column: str) -> PhotoCollection:
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise CollectionError(f"photo collection {path} holds no parquet files", _KINDS)
    index: list[tuple[int, int, int]] = []  # (file, row group, row in group)
    col = _image_column(pq.read_schema(files[0]), column, str(path))
    for fi, f in enumerate(files):
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            index += [(fi, g, r) for r in range(meta.row_group(g).num_rows)]
    cache: dict[tuple[int, int], list[Any]] = {}

    def read(i: int) -> Path | bytes | None:
        fi, g, r = index[i]
        if (fi, g) not in cache:
            cache.clear()  # one row group in memory at a time
            cache[(fi, g)] = pq.ParquetFile(files[fi]).read_row_group(g, [col])[col].to_pylist()
        return _cell_bytes(cache[(fi, g)][r], files[fi].parent)

    names = [f"{files[fi].name}:{g}:{r}" for fi, g, r in index]
    return PhotoCollection(str(path), "parquet", names, read)


def _expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → the three names (the WebDataset shard notation)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [
        name
        for n in range(int(lo), int(hi) + 1)
        for name in _expand_braces(f"{head}{n:0{len(lo)}d}{tail}")
    ]


def _webdataset(shards: list[Path], column: str, where: str) -> PhotoCollection:
    entries: list[tuple[Path, str]] = []
    names = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            samples: dict[str, dict[str, str]] = {}
            for m in tar.getmembers():
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                prefix = m.name[: len(m.name) - len(base)]
                samples.setdefault(prefix + key, {})[ext.lower()] = m.name
        for key, members in samples.items():
            if column:
                found = members.get(column.lower(), "")
            else:
                exts = [e for e in IMAGE_EXTS if e in members]
                exts += sorted(e for e in members if e.rsplit(".", 1)[-1] in IMAGE_EXTS)
                found = members[exts[0]] if exts else ""
            entries.append((shard, found))
            names.append(f"{shard.name}:{key}")

    def read(i: int) -> bytes | None:
        shard, member = entries[i]
        if not member:
            return None
        with tarfile.open(shard) as tar:
            handle = tar.extractfile(member)
            return handle.read() if handle else None

    return PhotoCollection(where, "webdataset", names, read)


def _hub(location: str, column: str, split: str) -> PhotoCollection:
    import datasets

    try:
        ds = datasets.load_dataset(location, split=split)
    except Exception as err:  # the hub client raises many kinds; all mean "cannot read it"
        raise CollectionError(
            f"photo collection {location} cannot be read from the Hugging Face hub "
            f"({type(err).__name__}: {str(err)[:200]})",
            "check the id, your network and HF_TOKEN, or download it and pass a local path",
        ) from None
    col = column or next((n for n, f in ds.features.items() if isinstance(f, datasets.Image)), "")
    if not col or col not in ds.column_names:
        raise CollectionError(
            f"photo collection {location} has no image column {col!r} ({ds.column_names})",
            "set PHOTOS_COLUMN",
        )
    if isinstance(ds.features[col], datasets.Image):
        ds = ds.cast_column(col, datasets.Image(decode=False))
    return PhotoCollection(
        location,
        "hub",
        [f"row {i}" for i in range(len(ds))],
        lambda i: _cell_bytes(ds[i][col], None),
    )


_KINDS = (
    "give PHOTOS as a folder of images, an imagefolder (metadata.jsonl), a parquet file or "
    "folder, WebDataset .tar shards, or a hub id owner/name"
)


def open_collection(location: str, column: str = "", split: str = "train") -> PhotoCollection:
    """The photo collection at ``location`` (see the module docstring for the kinds)."""
    path = Path(location)
    if "{" in location and location.endswith(".tar"):
        shards = [Path(p) for p in _expand_braces(location)]
        missing = [str(p) for p in shards if not p.is_file()]
        if missing:
            raise CollectionError(f"WebDataset shards {missing[:3]} do not exist", _KINDS)
        return _webdataset(shards, column, location)
    if path.is_file() and path.suffix == ".tar":
        return _webdataset([path], column, location)
    if path.is_file() and path.suffix == ".parquet":
        return _parquet(path, column)
    if path.is_dir():
        if is_imagefolder(path):
            return _imagefolder(path, column)
        tars = sorted(path.glob("*.tar"))
        if tars:
            return _webdataset(tars, column, location)
        if any(path.rglob("*.parquet")):
            return _parquet(path, column)
        return _folder(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", location):
        return _hub(location, column, split)
    raise CollectionError(f"photo collection {location!r} does not exist", _KINDS)
