"""The run folder: content-addressed image blobs, ledgered parquet tables, stats.

Layout of ``results/<run>/``::

    blobs/ab/<sha256>.png            images, named by the sha256 of their PNG bytes
    tables/<table>/data/*.parquet    shards (many rows each)
    tables/<table>/ledger/*.parquet  one entry per committed shard (see ``shards``)
    stats/<table>.json               per-stage stats written by the runner
    config.yaml                      the validated config `nhr run` was started with
    summary.json, plots/, dataset/, notebooks/

The run folder is a local path or an object-store URL (``s3://bucket/run``,
``gs://…``; ``file://`` is a path), through ``nhr.store.files``: the same layout either
way. Every object is written whole (a temp file and a rename on a path, one PUT on an
object store, where a PUT is atomic and there is no rename), so a killed process leaves
either the old state or the new one, never half a file. Nothing in the engine renames
on an object store: a table's shard is committed by writing its ledger entry after it,
an export by writing its card after its (content-named) shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from nhr.lock import ObjectLock, RunLock
from nhr.store.blobs import (
    MAX_IMAGE_PIXELS,
    BlobStore,
    atomic_write_bytes,
    atomic_write_json,
    encode_png,
    load_image,
)
from nhr.store.files import Files, LocalFiles, ObjectFiles, is_url, join, location, open_files
from nhr.store.shards import LedgerEntry, ShardWriter, TableStore

__all__ = [
    "MAX_IMAGE_PIXELS",
    "BlobStore",
    "Files",
    "LedgerEntry",
    "LocalFiles",
    "ObjectFiles",
    "RunStore",
    "ShardWriter",
    "TableStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "encode_png",
    "is_url",
    "join",
    "load_image",
    "location",
    "open_files",
]


class RunStore:
    """A run folder (a path or an object-store URL): blobs, tables, stats, whole-object
    writes, and the run's locks. Code outside the store reads and writes the folder
    through these methods, never through ``root / ...``, so it works on either."""

    def __init__(self, root: Path | str | Files) -> None:
        self.files = open_files(root)
        if isinstance(self.files, LocalFiles):
            self.files.root.mkdir(parents=True, exist_ok=True)
        # a Path for a local folder, the URL for an object store
        self.root: Path | str = self.files.local_path() or self.files.url
        self.blobs = BlobStore(self.files)
        self.tables = TableStore(self.files)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the location (URL and options, no credential), never the caches."""
        return (RunStore, (self.files,))

    # ---- naming --------------------------------------------------------------------
    @property
    def local(self) -> bool:
        """Whether the folder is on a local (or mounted) filesystem."""
        return self.files.local

    @property
    def name(self) -> str:
        """The run folder's last path part (the run's default name)."""
        return self.files.describe().split("?")[0].rstrip("/").rsplit("/", 1)[-1]

    def url(self, rel: str = "") -> str:
        """``rel`` as a user names it: a path, or a URL on an object store."""
        return self.files.describe(rel)

    def local_path(self, rel: str = "") -> Path | None:
        """The local path of ``rel``, or None on an object store."""
        return self.files.local_path(rel)

    # ---- objects -------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        """Write ``rel`` whole, atomically."""
        self.files.write_bytes(rel, data)

    def read_bytes(self, rel: str) -> bytes:
        """The bytes of ``rel`` (``FileNotFoundError`` when missing)."""
        return self.files.read_bytes(rel)

    def write_json(self, rel: str, obj: Any) -> None:
        """Write ``obj`` as indented JSON, atomically."""
        self.files.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def read_json(self, rel: str) -> Any | None:
        """The JSON object in ``rel``, or None when it does not exist."""
        try:
            return json.loads(self.files.read_bytes(rel))
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        return self.files.exists(rel)

    def delete(self, rel: str) -> None:
        """Delete ``rel`` (nothing when it does not exist)."""
        self.files.delete(rel)

    def walk(self, rel: str) -> list[str]:
        """Every object under the folder ``rel`` (paths relative to the run folder)."""
        return self.files.walk(rel)

    def put_folder(self, folder: Path, rel: str, last: str = "README.md") -> list[str]:
        """Publish a locally built folder as ``rel``: on a path, build-beside-and-rename
        is the caller's (``export_dataset`` does it); on an object store every file is
        uploaded, ``last`` (the card that names the content-named shards) after all the
        others, then objects of the old folder that the new one lacks are deleted. A
        reader following the card never sees a mix. Returns the new objects."""
        folder = Path(folder)
        old = set(self.files.walk(rel))
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        names.sort(key=lambda n: n == last)
        new = []
        for name in names:
            self.files.write_bytes(f"{rel}/{name}", (folder / name).read_bytes())
            new.append(f"{rel}/{name}")
        for stale in sorted(old - set(new)):
            self.files.delete(stale)
        return new

    def lock(self, rel: str, what: str, wait_seconds: float = 0.0) -> RunLock | ObjectLock:
        """An exclusive lock named ``rel`` in the folder: a ``flock`` on a path, a
        heartbeat lease object on an object store (``nhr.lock``)."""
        if isinstance(self.files, LocalFiles):
            return RunLock(self.files.path(rel), what, wait_seconds)
        return ObjectLock(self.files, rel, what, wait_seconds)

    # ---- stats ---------------------------------------------------------------------
    def write_stats(self, table: str, stats: dict[str, Any]) -> None:
        """Write a stage's stats atomically."""
        self.write_json(f"stats/{table}.json", stats)

    def write_parts(
        self, table: str, parts: Iterable[pa.Table], schema: pa.Schema, fingerprint: str
    ) -> int:
        """Write a whole-table step's ``table`` a part at a time
        (:meth:`TableStore.write_parts`) and return its rows. The step's stats go first,
        so a crash part-way leaves a step that a rerun finds not done (it records its
        fingerprint in its stats only after this returns)."""
        self.delete(f"stats/{table}.json")
        info = {"settings_hash": "whole-table", "input_fingerprint": fingerprint}
        return sum(e.rows for e in self.tables.write_parts(table, parts, info, schema))

    def read_stats(self, table: str) -> dict[str, Any] | None:
        """A stage's stats, or None if it has not run."""
        return self.read_json(f"stats/{table}.json")

    def all_stats(self) -> dict[str, dict[str, Any]]:
        """Stats of every stage that has run, by table name."""
        names = sorted(n for n, _ in self.files.listdir("stats") if n.endswith(".json"))
        out = {}
        for name in names:
            if name.startswith("."):
                continue
            stats = self.read_json(f"stats/{name}")
            if stats is not None:
                out[name[: -len(".json")]] = stats
        return out
