"""The run folder: content-addressed image blobs, ledgered parquet tables, stats.

Layout of ``results/<run>/``::

    blobs/ab/<sha256>.png            images, named by the sha256 of their PNG bytes
    tables/<table>/data/*.parquet    shards (many rows each)
    tables/<table>/ledger/*.parquet  one entry per committed shard (see ``shards``)
    stats/<table>.json               per-stage stats written by the runner
    config.yaml                      the validated config `nhr run` was started with
    summary.json, plots/, dataset/, notebooks/

Every object is written whole (temp file and rename), so a killed process leaves either
the old state or the new one, never half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nhr.store.blobs import (
    MAX_IMAGE_PIXELS,
    BlobStore,
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    load_image,
)
from nhr.store.shards import LedgerEntry, ShardWriter, TableStore

__all__ = [
    "MAX_IMAGE_PIXELS",
    "BlobStore",
    "LedgerEntry",
    "RunStore",
    "ShardWriter",
    "TableStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "encode_png",
    "load_image",
]


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
