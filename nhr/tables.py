"""A read-only view of a run's tables, as Arrow: what summary, truth, evaluation,
bootstrapping and the export read.

It sits just above the store and below everything that computes on a run, so those
modules take a :class:`RunTables` instead of reaching back into the pipeline. Reads are
columnar (only the columns asked for), counts come from the ledger or one bool
column, and the candidate filters are resolved here once, so every reader agrees on
which candidates survived.

Whole-table steps record an input fingerprint with their output (:func:`fingerprint`):
the inputs' ledger entries plus the step's settings. A rerun whose fingerprint
matches the recorded one finds the step done and recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.hashing import KeyIndex
from nhr.records import from_table
from nhr.steps import FILTERS, SUBJECTS, TABLE_TYPES
from nhr.store import RunStore

# tables of whole-table steps that hold no records: the perceptual hash of each image
# (computed once per image, reused by every later dedup of the run)
SCHEMAS: dict[str, pa.Schema] = {
    "image_hashes": pa.schema([("image", pa.string()), ("phash", pa.uint64())]),
}


class RunTables:
    """The tables of one run folder, read-only.

    ``enabled`` names the candidate filters that ran (the validator always does), so
    :meth:`survivors` knows which verdict tables to apply.
    """

    def __init__(self, store: RunStore, enabled: Sequence[str] = FILTERS) -> None:
        self.store = store
        self.enabled = tuple(name for name in FILTERS if name in enabled or name == "validator")

    # ---- whole tables ----------------------------------------------------------------
    def schema(self, name: str) -> pa.Schema:
        """The Arrow schema of a table."""
        return SCHEMAS[name] if name in SCHEMAS else TABLE_TYPES[name].schema()

    def exists(self, name: str) -> bool:
        """Whether the table has been written."""
        return self.store.tables.exists(name)

    def read(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A table (or some of its columns), typed by its schema; empty when unwritten."""
        cols = list(columns) if columns is not None else None
        return self.store.tables.read(name, self.schema(name), columns=cols)

    def iter_batches(
        self, name: str, columns: Sequence[str] | None = None, batch_rows: int = 65_536
    ) -> Iterator[pa.RecordBatch]:
        """A table in record batches, without loading all of it."""
        cols = list(columns) if columns is not None else None
        yield from self.store.tables.iter_batches(name, cols, batch_rows)

    def stream(
        self, name: str, columns: Sequence[str] | None = None, batch_rows: int = 65_536
    ) -> TableStream:
        """A table as a sized stream of tables of at most ``batch_rows`` rows, typed by
        its schema (a stage's input that is never held whole)."""
        return TableStream(self, name, columns, batch_rows)

    def read_where(
        self,
        name: str,
        column: str,
        values: pa.Array | pa.ChunkedArray,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows of a table whose ``column`` is one of ``values``, in table order, read
        a batch at a time: only those rows are ever held."""
        wanted = KeyIndex(values)  # hashed once, not once per batch
        return self.read_filtered(name, lambda t: wanted.isin(t.column(column)), columns)

    def read_filtered(
        self,
        name: str,
        keep: Callable[[pa.Table], pa.Array | pa.ChunkedArray],
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows of a table for which ``keep`` (a boolean mask of a batch) is true, in
        table order, read a batch at a time: only those rows are ever held."""
        parts = [t.filter(keep(t)) for t in self.stream(name, columns)]
        schema = self.schema(name)
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.concat_tables([schema.empty_table(), *parts])

    def rows(self, name: str, limit: int | None = None) -> list[Any]:
        """A table as typed records (for per-row Python; prefer :meth:`read`), or its
        first ``limit`` records, reading no more batches than those need."""
        cls = TABLE_TYPES[name]
        if limit is None:
            return from_table(self.read(name), cls)
        out: list[Any] = []
        for batch in self.store.tables.iter_batches(
            name, batch_rows=max(limit, 1), schema=self.schema(name)
        ):
            out += from_table(batch, cls)[: limit - len(out)]
            if len(out) >= limit:
                break
        return out

    def count(self, name: str) -> int:
        """Rows of a table (0 when unwritten), opening no more than the footers."""
        return self.store.tables.count(name)

    def stats(self, name: str) -> dict[str, Any] | None:
        """The stats a step recorded for a table, or None."""
        return self.store.read_stats(name)

    # ---- verdicts --------------------------------------------------------------------
    def passed_mask(self, name: str) -> pa.Table:
        """``subject_id`` and ``passed`` of a verdict table."""
        return self.read(name, ["subject_id", "passed"])

    def count_passed(self, name: str) -> int:
        """Passed verdicts of a verdict table, from its bool column alone."""
        passed = self.read(name, ["passed"]).column("passed")
        return int(pc.sum(passed).as_py() or 0)

    def passed_ids(self, name: str) -> pa.Array:
        """Ids of the subjects a verdict table passed."""
        t = self.passed_mask(name)
        return t.column("subject_id").filter(t.column("passed")).combine_chunks()

    def failed_ids(self, name: str) -> pa.Array:
        """Ids of the subjects a verdict table failed."""
        t = self.passed_mask(name)
        return t.column("subject_id").filter(pc.invert(t.column("passed"))).combine_chunks()

    def survivor_ids(self, after: str = "validator") -> pa.Array | None:
        """Ids of candidates that pass every enabled filter up to and including
        ``after``; None when no enabled filter precedes it (all candidates survive)."""
        if after not in FILTERS:
            raise ValueError(f"unknown filter {after!r}; filters: {', '.join(FILTERS)}")
        keep: pa.Array | None = None
        for name in FILTERS[: FILTERS.index(after) + 1]:
            if name not in self.enabled:
                continue
            ids = self.passed_ids(name)
            keep = ids if keep is None else ids.filter(pc.is_in(ids, value_set=keep))
        return keep

    def survivors(self, after: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Candidates (in table order) that survive every enabled filter up to and
        including ``after``."""
        candidates = self.read("candidates", columns)
        keep = self.survivor_ids(after)
        if keep is None:
            return candidates
        ids = (
            candidates.column("candidate_id")
            if "candidate_id" in candidates.column_names
            else self.read("candidates", ["candidate_id"]).column("candidate_id")
        )
        return candidates.filter(pc.is_in(ids, value_set=keep))

    def survivor_stream(self, after: str) -> TableStream:
        """``survivors`` as a sized stream of tables (the candidates read a batch at a
        time)."""
        return TableStream(self, "candidates", None, keep=self.survivor_ids(after))

    def subjects_failed(self, name: str) -> pa.Table:
        """The subjects (rows of ``SUBJECTS[name]``) a verdict table failed, in order."""
        subjects = self.read(SUBJECTS[name])
        key = TABLE_TYPES[SUBJECTS[name]].key
        return subjects.filter(pc.is_in(subjects.column(key), value_set=self.failed_ids(name)))

    # ---- triplets --------------------------------------------------------------------
    def triplets_name(self) -> str:
        """``triplets`` once bootstrapping assembled it, else ``mined``."""
        return "triplets" if self.exists("triplets") else "mined"

    def triplets(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The triplets the export writes (bootstrapped if assembled, else mined)."""
        return self.read(self.triplets_name(), columns)

    def by_origin(self, origin: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The triplets of one origin (mined, inverted, composed)."""
        t = self.triplets(None if columns is None else sorted({*columns, "origin"}))
        t = t.filter(pc.equal(t.column("origin"), origin))
        return t if columns is None else t.select(list(columns))

    # ---- step bookkeeping ------------------------------------------------------------
    def fingerprint(self, inputs: Sequence[str], settings: dict[str, Any]) -> str:
        """What a whole-table step's output depends on: its inputs' committed ledger
        entries (names and row counts: an entry is written once and never changed) and
        its settings."""
        parts: list[Any] = [settings]
        for name in inputs:
            entries = self.store.tables.entries(name)
            parts.append([name, [(e.name, e.rows) for e in entries]])
        blob = json.dumps(parts, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def done(self, name: str, fingerprint: str) -> dict[str, Any] | None:
        """The recorded stats of a whole-table step whose inputs and settings are
        unchanged (its output is still there), else None."""
        stats = self.stats(name)
        if stats is None or stats.get("input_fingerprint") != fingerprint:
            return None
        return stats


class TableStream:
    """A table read a batch at a time, each batch a ``pa.Table`` typed by the table's
    schema, only the rows whose key is in ``keep`` where one is given; ``len`` is its
    row count, from the ledger (or ``keep``), so a progress bar knows its total."""

    def __init__(
        self,
        tables: RunTables,
        name: str,
        columns: Sequence[str] | None = None,
        batch_rows: int = 65_536,
        keep: pa.Array | None = None,
    ) -> None:
        self.tables = tables
        self.name = name
        self.columns = list(columns) if columns is not None else None
        self.batch_rows = batch_rows
        self.keep = keep

    def __len__(self) -> int:
        return self.tables.count(self.name) if self.keep is None else len(self.keep)

    def __iter__(self) -> Iterator[pa.Table]:
        store = self.tables.store.tables
        if not store.exists(self.name):
            return
        schema = self.tables.schema(self.name)
        key = TABLE_TYPES[self.name].key if self.keep is not None else None
        keep = KeyIndex(self.keep) if self.keep is not None else None  # hashed once
        for batch in store.iter_batches(self.name, self.columns, self.batch_rows, schema):
            table = pa.Table.from_batches([batch])
            if key is not None and keep is not None:
                table = table.filter(keep.isin(table.column(key)))
            if table.num_rows:
                yield table


def flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array of a column (a column of one chunk: that chunk, not a copy)."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def positions(keys: pa.Array | pa.ChunkedArray, index: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Positions of ``keys`` in ``index`` as int64, -1 where a key is absent (the first
    position when ``index`` repeats a key)."""
    pos = pc.index_in(flat(keys), value_set=flat(index))
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def required_positions(
    keys: pa.Array | pa.ChunkedArray, index: pa.Array | pa.ChunkedArray, what: str
) -> np.ndarray:
    """:func:`positions` when every key is in ``index``, else an error naming the first
    missing one."""
    pos = positions(keys, index)
    if len(pos) and pos.min() < 0:
        missing = flat(keys)[int(np.argmin(pos))].as_py()
        raise ValueError(
            f"{what} {missing!r} is missing from its table: rerun the stage that writes it"
        )
    return pos


def take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """The rows of ``table`` at positions ``rows`` (int64)."""
    return table.take(pa.array(rows, pa.int64()))


def group_starts(table: pa.Table, keys: Sequence[str]) -> np.ndarray:
    """Positions where a new group of equal ``keys`` starts in a table sorted by them."""
    n = table.num_rows
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
    for key in keys:
        col = flat(table.column(key))
        if n > 1:
            diff = pc.not_equal(col.slice(1), col.slice(0, n - 1))
            new[1:] |= pc.fill_null(diff, True).to_numpy(zero_copy_only=False)
    return np.flatnonzero(new)


def typed_table(columns: dict[str, Any], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from ``columns`` (arrays, chunked arrays or numpy arrays)."""
    arrays = []
    for f in schema:
        col = columns[f.name]
        arrays.append(
            pa.array(col, f.type) if isinstance(col, np.ndarray) else flat(col).cast(f.type)
        )
    return pa.Table.from_arrays(arrays, schema=schema)


def constant(value: Any, n: int, type_: pa.DataType | None = None) -> pa.Array:
    """An array of ``n`` copies of ``value`` (a string unless ``type_`` says otherwise)."""
    return pa.repeat(pa.scalar(value, type_ or pa.string()), n)


__all__ = [
    "FILTERS",
    "SCHEMAS",
    "SUBJECTS",
    "TABLE_TYPES",
    "RunTables",
    "TableStream",
    "constant",
    "flat",
    "group_starts",
    "positions",
    "required_positions",
    "take",
    "typed_table",
]
