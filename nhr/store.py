"""The run folder: content-addressed image blobs and parquet shard tables.

Layout of ``results/<run>/``::

    blobs/ab/<sha256>.png     images, named by the sha256 of their PNG bytes
    tables/<table>/part-*.parquet
    stats/<table>.json        per-stage stats written by the runner
    config.yaml               the validated config `nhr run` was started with
    summary.json, plots/, dataset/, notebooks/

Every write goes to a temp file in the same folder and is renamed into place, so a
killed process leaves either the old state or the new one, never half a file. Each
shard records in its parquet metadata the input keys it covers and the fingerprint of
the settings that made it; that is what resume and the mixed-settings check read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from nhr.errors import ImageError, RunFolderError

MAX_IMAGE_PIXELS = 4096 * 4096
META_KEYS = b"nhr.input_keys"
META_INFO = b"nhr.info"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image, deterministic for the same pixels."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an image fully as RGB through the one loader (``nhr.images``), refusing
    unreadable or over-large files with a clear error."""
    from nhr.images import ImageLimits, ImageRefused, open_image

    if not path.is_file():
        raise ImageError(f"image {path} is missing", "rerun the stage that wrote it")
    try:
        return open_image(path, ImageLimits(max_pixels=max_pixels), where=f"image {path}")
    except ImageRefused as err:
        if err.reason == "too_many_pixels":
            raise ImageError(
                f"image {path} is over {max_pixels} pixels ({err.problem})",
                "downscale it, or raise the limit if you trust the file",
            ) from None
        raise ImageError(
            f"image {path} cannot be read ({err.reason}: {err.problem})",
            "delete it and rerun the stage that wrote it, or replace the file",
        ) from None


class BlobStore:
    """Images stored once each, by the sha256 of their PNG bytes, under ``root/blobs``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, image: Image.Image) -> str:
        """Store an image; returns its path relative to the run folder."""
        data = encode_png(image.convert("RGB"))
        digest = hashlib.sha256(data).hexdigest()
        rel = f"blobs/{digest[:2]}/{digest}.png"
        path = self.root / rel
        if not path.exists():
            atomic_write_bytes(path, data)
        return rel

    def get(self, rel: str) -> Image.Image:
        """Load a stored image as RGB; a damaged blob's error names the repair command."""
        try:
            return load_image(self.root / rel)
        except ImageError as err:
            raise ImageError(
                err.problem,
                f"run `nhr repair {self.root}` (it deletes the image and the rows that made "
                "it), then rerun: the same image is made again",
            ) from None

    def path(self, rel: str) -> Path:
        """The absolute path of a stored image."""
        return self.root / rel

    def read_bytes(self, rel: str) -> bytes:
        """The PNG bytes of a stored image."""
        return (self.root / rel).read_bytes()


class TableStore:
    """Parquet shard tables under ``root/tables/<name>/``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        """The folder of a table."""
        return self.root / "tables" / name

    def shards(self, name: str) -> list[Path]:
        """The table's finished shards (temp files of killed writers are ignored)."""
        folder = self.folder(name)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("part-*.parquet"))

    def write_shard(
        self,
        name: str,
        shard: str,
        table: pa.Table,
        input_keys: list[str],
        info: dict[str, Any],
    ) -> Path:
        """Write one shard atomically, recording the input keys it covers and its info."""
        meta = dict(table.schema.metadata or {})
        meta[META_KEYS] = json.dumps(input_keys).encode()
        meta[META_INFO] = json.dumps(info).encode()
        table = table.replace_schema_metadata(meta)
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd")
        path = self.folder(name) / f"part-{shard}.parquet"
        atomic_write_bytes(path, buf.getvalue().to_pybytes())
        return path

    def shard_meta(self, path: Path) -> tuple[list[str], dict[str, Any]]:
        """The input keys and info recorded in a shard."""
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowInvalid) as err:
            raise RunFolderError(
                f"table shard {path} is damaged ({err})",
                "delete that file; the stage will redo its rows on the next run",
            ) from None
        return json.loads(meta.get(META_KEYS, b"[]")), json.loads(meta.get(META_INFO, b"{}"))

    def iter_meta(self, name: str) -> Iterator[tuple[Path, list[str], dict[str, Any]]]:
        """(path, input keys, info) of every shard of a table."""
        for path in self.shards(name):
            keys, info = self.shard_meta(path)
            yield path, keys, info

    def read(self, name: str, schema: pa.Schema | None = None) -> pa.Table:
        """The whole table (empty with ``schema`` when it has no shards yet)."""
        shards = self.shards(name)
        if not shards:
            if schema is None:
                raise RunFolderError(
                    f"table {name!r} does not exist in {self.root}",
                    "run the stage that writes it first",
                )
            return schema.empty_table()
        tables = []
        for path in shards:
            try:
                tables.append(pq.read_table(path).replace_schema_metadata(None))
            except (OSError, pa.ArrowInvalid) as err:
                raise RunFolderError(
                    f"table shard {path} is damaged ({err})",
                    "delete that file; the stage will redo its rows on the next run",
                ) from None
        if schema is not None:
            tables = [t.cast(schema) if t.num_rows else schema.empty_table() for t in tables]
        return pa.concat_tables(tables)

    def exists(self, name: str) -> bool:
        """Whether the table has at least one shard."""
        return bool(self.shards(name))


class RunStore:
    """A run folder: blobs, tables, stats, with atomic writes."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root)
        self.tables = TableStore(self.root)

    def stats_path(self, table: str) -> Path:
        """Where a stage's stats live."""
        return self.root / "stats" / f"{table}.json"

    def write_stats(self, table: str, stats: dict[str, Any]) -> None:
        """Write a stage's stats atomically."""
        atomic_write_json(self.stats_path(table), stats)

    def read_stats(self, table: str) -> dict[str, Any] | None:
        """A stage's stats, or None if it has not run."""
        path = self.stats_path(table)
        return json.loads(path.read_text()) if path.is_file() else None

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """Stats of every stage that has run, by table name."""
        folder = self.root / "stats"
        if not folder.is_dir():
            return {}
        return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
