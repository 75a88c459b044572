"""Tables as parquet shards, each committed by a small ledger entry.

Layout of ``tables/<name>/``::

    data/<entry>.parquet     a shard: many rows, sized by rows / bytes / seconds
    ledger/<entry>.parquet   its ledger entry: column ``key`` holds the input keys the
                             shard covers; schema metadata ``nhr.entry`` holds its info
                             (rows, rows in, seconds, usage, settings and their hash,
                             drops by reason, errors by kind)

A shard is written first, then its ledger entry; writing the entry commits the shard.
Both are whole-object writes (a temp file and a rename on a path; a PUT on an object
store, where there is no rename), so a killed writer leaves at most a shard without an
entry: an orphan, which readers never see and the next writer deletes. Resume, `exists`,
`count` and stats read only the ledger, never a shard.

A whole-table step writes its table with ``write_table``: one entry of kind ``whole``
that supersedes every entry before it (they and their shards are deleted after it is
committed), so the table is replaced as a whole or not at all.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nhr.errors import RunFolderError
from nhr.records import Record, to_table
from nhr.steps import maker
from nhr.store.files import Files, LocalFiles, open_files

ENTRY_META = b"nhr.entry"
KEY_COLUMN = "key"
# tables written before the ledger: one parquet file per batch, keys in its footer
LEGACY_GLOB = "part-*.parquet"

# defaults of the buffered writer: a shard closes at whichever comes first
SHARD_ROWS = 50_000
SHARD_BYTES = 64 * 2**20
FLUSH_SECONDS = 60.0
RECORDS_PER_TABLE = 4096  # buffered records turned into Arrow at once
ROW_GROUP_ROWS = 65_536  # rows per parquet row group of a shard


@dataclass(frozen=True)
class LedgerEntry:
    """One committed shard: its entry name and recorded info."""

    name: str
    info: dict[str, Any]

    @property
    def rows(self) -> int:
        """Output rows in the shard."""
        return int(self.info.get("rows", 0))

    @property
    def shard(self) -> str:
        """The shard's file name under ``data/``."""
        return str(self.info["shard"])


def _parquet_bytes(table: pa.Table) -> memoryview:
    """A table as zstd parquet bytes, in row groups of ``ROW_GROUP_ROWS`` (a reader that
    streams a shard decodes one row group at a time: a whole-table step's single shard
    would otherwise be one group of every row): a view of Arrow's buffer, not a copy of
    it (a whole-table step's shard is the size of its table)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return memoryview(buf.getvalue())


def column_counts(table: pa.Table) -> tuple[dict[str, int], dict[str, int]]:
    """(failed verdicts by reason, judge errors by kind) of a table, from its columns
    (empty for tables without ``passed`` / ``error`` columns)."""
    drops: dict[str, int] = {}
    errors: dict[str, int] = {}
    names = table.schema.names
    if table.num_rows and "passed" in names and "reason" in names:
        failed = table.filter(pc.invert(pc.fill_null(table.column("passed"), False)))
        for item in pc.value_counts(failed.column("reason")).to_pylist():
            drops[str(item["values"])] = int(item["counts"])
    if table.num_rows and "error" in names:
        errs = pc.drop_null(table.column("error"))
        if len(errs):
            kinds = pc.list_element(pc.split_pattern(errs, ":", max_splits=1), 0)
            for item in pc.value_counts(kinds).to_pylist():
                errors[str(item["values"])] = int(item["counts"])
    return dict(sorted(drops.items())), dict(sorted(errors.items()))


class TableStore:
    """Ledgered parquet tables under ``root/tables/<name>/`` (``root`` a path, a URL or a
    ``Files``: every object is read and written through it)."""

    def __init__(self, root: Path | str | Files) -> None:
        self.files = open_files(root)
        self.root = self.files.local_path() or self.files.url
        self._entries: dict[str, dict[str, tuple[tuple[int, int], dict[str, Any]]]] = {}
        self._checked: set[str] = set()  # tables whose folder has no legacy files
        self._last_ns = 0

    # ---- layout --------------------------------------------------------------------
    def folder(self, name: str) -> Path | str:
        """The folder of a table (a path, or a URL on an object store)."""
        return self.files.local_path(f"tables/{name}") or self.files.describe(f"tables/{name}")

    def _ledger(self, name: str) -> str:
        return f"tables/{name}/ledger"

    def _data(self, name: str) -> str:
        return f"tables/{name}/data"

    def shard_rel(self, name: str, entry: LedgerEntry) -> str:
        """A committed shard's path relative to the run folder."""
        return f"{self._data(name)}/{entry.shard}"

    def entry_rel(self, name: str, entry: LedgerEntry) -> str:
        """A ledger entry's path relative to the run folder."""
        return f"{self._ledger(name)}/{entry.name}.parquet"

    def shard_path(self, name: str, entry: LedgerEntry) -> Path | str:
        """The file of a committed shard (a path, or a URL on an object store)."""
        rel = self.shard_rel(name, entry)
        return self.files.local_path(rel) or self.files.describe(rel)

    def _check_legacy(self, name: str) -> None:
        """Refuse a local table of loose parquet files without a ledger (checked once
        per table; object stores only ever hold ledgered tables)."""
        if name in self._checked or not isinstance(self.files, LocalFiles):
            return
        folder = self.files.path(f"tables/{name}")
        if not folder.is_dir():
            return
        if next(folder.glob(LEGACY_GLOB), None) is not None:
            raise RunFolderError(
                f"table {name!r} in {self.root} was written by an older nhr (one parquet "
                "file per batch, without a ledger), which this version does not read",
                "use a new run folder (or rerun the old run with the nhr that wrote it)",
            )
        self._checked.add(name)

    # ---- the ledger ----------------------------------------------------------------
    def _entry_source(self, rel: str) -> Any:
        """What pyarrow reads a ledger entry from: its path locally; on an object store
        its bytes, fetched with one GET (entries are small; a parquet reader on a remote
        file would ask for its size, then its footer, then its pages)."""
        if self.files.local:
            return self.files.arrow(rel)[0]
        return pa.BufferReader(self.files.read_bytes(rel))

    def _read_info(self, rel: str) -> dict[str, Any]:
        try:
            meta = pq.read_schema(self._entry_source(rel)).metadata or {}
            return json.loads(meta[ENTRY_META])
        except (OSError, pa.ArrowInvalid, KeyError, ValueError) as err:
            raise RunFolderError(
                f"ledger entry {self.files.describe(rel)} is damaged ({type(err).__name__}: {err})",
                "delete that file; the stage will redo its rows on the next run",
            ) from None

    def _all_entries(self, name: str) -> list[LedgerEntry]:
        """Every entry file of a table, oldest first (new files read once, then cached).

        A cached entry is reused while its (mtime, size) stamp is unchanged. Object
        stores stamp in whole seconds, so there a named part (the one entry rewritten in
        place, by ``write_part``) is read again every time."""
        self._check_legacy(name)
        folder = self._ledger(name)
        cache = self._entries.setdefault(name, {})
        listing = self.files.listdir(folder)
        if not listing:
            cache.clear()
            return []
        rewritable = not self.files.local
        seen: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
        for item, stamp in listing:
            if not item.endswith(".parquet") or item.startswith("."):
                continue
            old = cache.get(item)
            if (
                old is not None
                and old[0] == stamp
                and not (rewritable and item.startswith("part-"))
            ):
                seen[item] = old
            else:
                seen[item] = (stamp, self._read_info(f"{folder}/{item}"))
        cache.clear()
        cache.update(seen)
        entries = [LedgerEntry(n[: -len(".parquet")], info) for n, (_, info) in seen.items()]
        return sorted(entries, key=lambda e: (int(e.info.get("created_ns", 0)), e.name))

    def entries(self, name: str) -> list[LedgerEntry]:
        """The live entries of a table, oldest first: everything from its last whole-table
        write on (earlier entries are superseded)."""
        entries = self._all_entries(name)
        wholes = [i for i, e in enumerate(entries) if e.info.get("kind") == "whole"]
        return entries[wholes[-1] :] if wholes else entries

    def exists(self, name: str) -> bool:
        """Whether the table has a committed shard (an empty one counts)."""
        return bool(self.entries(name))

    def count(self, name: str) -> int:
        """Rows in the table, from the ledger (no shard is opened)."""
        return sum(e.rows for e in self.entries(name))

    def input_keys(self, name: str) -> pa.Array:
        """Every input key the table's shards cover (a string array, from the ledger).

        The entries are read twice: once for the keys' count and bytes, once to copy
        them into the array, made at its size up front. What is held is the keys once
        and one entry's read, not every entry's read beside their concatenation (at 3M
        keys, 60 MB of them: a peak 109 MB above the process's start against 169)."""
        sources = [self._entry_source(self.entry_rel(name, e)) for e in self.entries(name)]
        n = size = 0
        for chunk in _key_chunks(sources):
            n += len(chunk)
            size += _key_bytes(chunk)[1].nbytes
        if size >= 1 << 31:  # past what 32-bit offsets address: a large string array
            return pa.concat_arrays([c.cast(pa.large_string()) for c in _key_chunks(sources)])
        offsets = np.zeros(n + 1, np.int32)
        data = np.empty(size, np.uint8)
        row = byte = 0
        for chunk in _key_chunks(sources):
            ends, piece = _key_bytes(chunk)
            offsets[row + 1 : row + 1 + len(chunk)] = ends[1:] - ends[0] + byte
            data[byte : byte + len(piece)] = piece
            row, byte = row + len(chunk), byte + len(piece)
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))

    # ---- reading -------------------------------------------------------------------
    def _missing(self, name: str) -> RunFolderError:
        return RunFolderError(
            f"table {name!r} does not exist in {self.files.describe()}", maker(name)
        )

    def _open(self, name: str, entry: LedgerEntry) -> pq.ParquetFile:
        rel = self.shard_rel(name, entry)
        try:
            path, fs = self.files.arrow(rel)
            return pq.ParquetFile(path, filesystem=fs)
        except (OSError, pa.ArrowInvalid) as err:
            raise RunFolderError(
                f"table shard {self.files.describe(rel)} is damaged ({err})",
                f"delete it and {self.files.describe(self.entry_rel(name, entry))}; the stage "
                "will redo its rows on the next run",
            ) from None

    def read(
        self, name: str, schema: pa.Schema | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """The whole table, or only ``columns`` of it; empty with ``schema`` when it has
        no shards yet (without ``schema`` a missing table is an error)."""
        batches = list(self.iter_batches(name, columns, schema=schema))
        if batches:
            return pa.Table.from_batches(batches)
        if schema is None and not self.exists(name):
            raise self._missing(name)
        if schema is None:
            return self._open(name, self.entries(name)[0]).schema_arrow.empty_table()
        out = schema.empty_table()
        return out.select(columns) if columns is not None else out

    def iter_batches(
        self,
        name: str,
        columns: list[str] | None = None,
        batch_rows: int = 65_536,
        schema: pa.Schema | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The table in record batches of at most ``batch_rows`` rows, shard by shard, so
        a table far larger than memory can be scanned (cast to ``schema`` if given)."""
        entries = self.entries(name)
        if not entries and schema is None:
            raise self._missing(name)
        target = schema
        if schema is not None and columns is not None:
            target = pa.schema([schema.field(c) for c in columns])
        for entry in entries:
            if not entry.rows:
                continue
            handle = self._open(name, entry)
            try:
                for batch in handle.iter_batches(batch_size=batch_rows, columns=columns):
                    batch = batch.replace_schema_metadata(None)
                    yield batch.cast(target) if target is not None else batch
            finally:
                handle.close()

    # ---- writing -------------------------------------------------------------------
    def _stamp(self) -> str:
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        return f"{now:020d}-{uuid.uuid4().hex[:8]}"

    def _put_shard(self, name: str, shard: str, data: bytes | memoryview) -> None:
        self.files.write_bytes(f"{self._data(name)}/{shard}", data)

    def _put_entry(self, name: str, entry: str, data: bytes | memoryview) -> None:
        self.files.write_bytes(f"{self._ledger(name)}/{entry}.parquet", data)

    def commit(
        self,
        name: str,
        table: pa.Table,
        input_keys: pa.Array | list[str],
        info: dict[str, Any],
        kind: str = "rows",
        entry: str | None = None,
    ) -> LedgerEntry:
        """Write one shard, then the ledger entry that commits it (with ``info`` plus the
        rows, input rows, drops by reason and errors by kind counted from the table)."""
        self._check_legacy(name)
        stamp = self._stamp()
        entry = entry or stamp
        keys = pa.array(input_keys, pa.string()) if isinstance(input_keys, list) else input_keys
        drops, errors = column_counts(table)
        full = {
            **info,
            "kind": kind,
            "shard": f"{stamp}.parquet",
            "rows": table.num_rows,
            "rows_in": len(keys),
            "created_ns": int(stamp.split("-")[0]),
            "drops_by_reason": drops,
            "errors_by_kind": errors,
        }
        self._put_shard(name, full["shard"], _parquet_bytes(table.replace_schema_metadata(None)))
        ledger = pa.table({KEY_COLUMN: keys.cast(pa.string())})
        ledger = ledger.replace_schema_metadata({ENTRY_META: json.dumps(full).encode()})
        self._put_entry(name, entry, _parquet_bytes(ledger))
        return LedgerEntry(entry, full)

    def write_table(self, name: str, table: pa.Table, info: dict[str, Any]) -> LedgerEntry:
        """Replace the whole table atomically (whole-table steps); earlier shards go."""
        done = self.commit(name, table, [], info, kind="whole")
        self.clean(name)
        return done

    def write_parts(
        self, name: str, parts: Iterable[pa.Table], info: dict[str, Any], schema: pa.Schema
    ) -> list[LedgerEntry]:
        """Replace the whole table with ``parts``, one shard each, so a whole-table step
        holds one part at a time, not its table: the first part is committed as a
        whole-table write (superseding every earlier entry), the others follow it (empty
        ones are skipped; no parts at all give an empty table of ``schema``).

        Unlike ``write_table`` a reader may see the table before its last part is in:
        the step that writes it records itself done only once this returns, and one
        that reruns after a crash starts again with a whole-table write."""
        done: list[LedgerEntry] = []
        for part in parts:
            if done and not part.num_rows:
                continue
            done.append(self.commit(name, part, [], info, kind="rows" if done else "whole"))
            if len(done) == 1:
                self.clean(name)
        if not done:
            done.append(self.write_table(name, schema.empty_table(), info))
        return done

    def write_part(
        self, name: str, part: str, table: pa.Table, input_keys: list[str], info: dict[str, Any]
    ) -> LedgerEntry:
        """Write (or replace) the named part ``part`` of a table."""
        old = self.read_part(name, part)
        done = self.commit(name, table, input_keys, info, entry=f"part-{part}")
        if old is not None:
            self.clean(name)
        return done

    def part_info(self, name: str, part: str) -> dict[str, Any] | None:
        """The info recorded with a named part of a table, or None if it was never
        written (reads the ledger only)."""
        for entry in self.entries(name):
            if entry.name == f"part-{part}":
                return entry.info
        return None

    def read_part(self, name: str, part: str) -> pa.Table | None:
        """A named part of a table, or None if it was never written."""
        for entry in self.entries(name):
            if entry.name == f"part-{part}":
                return self._open(name, entry).read().replace_schema_metadata(None)
        return None

    def drop(self, name: str, entry: LedgerEntry) -> None:
        """Uncommit one shard: delete its ledger entry, then the shard itself."""
        self.files.delete(self.entry_rel(name, entry))
        self.files.delete(self.shard_rel(name, entry))

    def clean(self, name: str) -> list[str]:
        """Delete superseded entries, orphan shards (written, never committed) and temp
        files of killed writers; returns what was deleted. Call it as the table's only
        writer (under the run's writer lock)."""
        removed = []
        live = self.entries(name)
        live_names = {e.name for e in live}
        for entry in self._all_entries(name):
            if entry.name not in live_names:
                rel = self.entry_rel(name, entry)
                self.files.delete(rel)
                removed.append(rel)
        shards = {e.shard for e in live}
        for folder in (self._data(name), self._ledger(name)):
            for item, _ in self.files.listdir(folder):
                temp = item.startswith(".tmp-")
                orphan = folder == self._data(name) and item not in shards
                if temp or orphan:
                    self.files.delete(f"{folder}/{item}")
                    removed.append(f"{folder}/{item}")
        return removed

    def writer(
        self,
        name: str,
        info: dict[str, Any],
        shard_rows: int = SHARD_ROWS,
        shard_bytes: int = SHARD_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        cls: type[Record] | None = None,
    ) -> ShardWriter:
        """A buffered writer of the table's shards (``info`` goes into every entry;
        ``cls`` types the records it is given)."""
        return ShardWriter(self, name, info, shard_rows, shard_bytes, flush_seconds, cls)


class ShardWriter:
    """Buffers a stage's output and commits it as shards of many rows.

    A shard closes when it holds ``shard_rows`` rows or ``shard_bytes`` bytes (in
    memory), or when its first batch is ``flush_seconds`` old, so a crash loses at most
    about that much work. These settings change how a table is split into files, never
    its rows.
    """

    def __init__(
        self,
        tables: TableStore,
        name: str,
        info: dict[str, Any],
        shard_rows: int = SHARD_ROWS,
        shard_bytes: int = SHARD_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        cls: type[Record] | None = None,
    ) -> None:
        self.tables = tables
        self.cls = cls
        self.name = name
        self.info = info
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.flush_seconds = flush_seconds
        self._tables: list[pa.Table] = []
        self._records: list[Any] = []
        self._keys: list[pa.Array] = []
        self._seconds = 0.0
        self._usage: Counter[str] = Counter()
        self._rows = 0
        self._bytes = 0
        self._since: float | None = None
        self.committed: list[LedgerEntry] = []

    def add(
        self,
        rows: pa.Table | list[Any],
        input_keys: pa.Array,
        seconds: float,
        usage: dict[str, float],
    ) -> LedgerEntry | None:
        """Buffer one batch's output (a table, or records of the writer's ``cls``, turned
        into a table a few thousand at a time); commit a shard when one is due."""
        if self._since is None:
            self._since = time.monotonic()
        if isinstance(rows, pa.Table):
            self._tables.append(rows)
            self._bytes += rows.nbytes
        else:
            self._records.extend(rows)
            if len(self._records) >= RECORDS_PER_TABLE:
                self._convert()
        self._keys.append(input_keys)
        self._seconds += seconds
        self._usage.update(usage)
        self._rows += len(rows)
        due = (
            self._rows >= self.shard_rows
            or self._bytes >= self.shard_bytes
            or time.monotonic() - self._since >= self.flush_seconds
        )
        return self.flush() if due else None

    def _convert(self) -> None:
        """Turn the buffered records into a table."""
        if self._records:
            if self.cls is None:
                raise TypeError(f"table {self.name!r}: records need the writer's record class")
            table = to_table(self._records, self.cls)
            self._tables.append(table)
            self._bytes += table.nbytes
            self._records = []

    def discard(self) -> None:
        """Drop what is buffered, uncommitted (a rerun computes it again)."""
        self._tables, self._records, self._keys = [], [], []
        self._seconds, self._rows, self._bytes, self._since = 0.0, 0, 0, None
        self._usage = Counter()

    def flush(self) -> LedgerEntry | None:
        """Commit what is buffered as one shard (nothing when nothing is)."""
        if not self._keys:
            return None
        self._convert()
        if self._tables:
            table = pa.concat_tables(self._tables).combine_chunks()
        else:
            table = self.cls.schema().empty_table() if self.cls else pa.table({})
        keys = pa.concat_arrays(self._keys)
        info = {
            **self.info,
            "seconds": self._seconds,
            "usage": {k: round(v, 6) for k, v in sorted(self._usage.items())},
        }
        entry = self.tables.commit(self.name, table, keys, info)
        self.committed.append(entry)
        self._tables, self._keys = [], []
        self._seconds, self._usage = 0.0, Counter()
        self._rows = self._bytes = 0
        self._since = None
        return entry


def _key_chunks(sources: list[Any]) -> Iterator[pa.Array]:
    """The key column of each ledger entry, as string arrays, an entry at a time."""
    for source in sources:
        if isinstance(source, pa.BufferReader):
            source.seek(0)
        for chunk in pq.read_table(source, columns=[KEY_COLUMN]).column(0).chunks:
            if len(chunk):
                yield chunk.cast(pa.string())


def _key_bytes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A string array's offsets (len + 1 of them) and the bytes they address, as views."""
    ends = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = np.frombuffer(chunk.buffers()[2] or b"", np.uint8)
    return ends, data[ends[0] : ends[-1]]
