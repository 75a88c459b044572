"""Reading a run's tables a slice at a time: what lets a whole-table step (selection,
bootstrapping) hold a slice of its wide rows, not its tables.

A step works out what it keeps from narrow columns read whole (ids, verdicts, scores),
then reads the wide rows it needs by position and writes its output in parts.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from nhr.hashing import KeyIndex
from nhr.tables import RunTables, take

# wide rows a whole-table step holds at once: its tables are read, and its output
# written, a slice of this many rows at a time
SLICE_ROWS = 32_768


def rows_where(
    tables: RunTables,
    name: str,
    column: str,
    values: pa.Array | pa.ChunkedArray,
    columns: Sequence[str],
) -> tuple[pa.Table, np.ndarray]:
    """The rows (``columns`` of them) of a table whose ``column`` is one of ``values``, in
    table order, and their positions in the table, read a batch at a time."""
    wanted = KeyIndex(values)  # hashed once, not once per batch
    parts, where, lo = [], [], 0
    for batch in tables.stream(name, [*columns] if column in columns else [*columns, column]):
        mask = wanted.isin(batch.column(column))
        parts.append(batch.filter(pa.array(mask)).select(list(columns)))
        where.append(lo + np.flatnonzero(mask))
        lo += batch.num_rows
    schema = tables.schema(name)
    empty = pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables([empty, *parts]), np.concatenate([np.zeros(0, np.int64), *where])


class RowsAt:
    """Rows of one table by position, read a batch at a time: positions asked for in
    increasing order, call after call, cost one pass over the table; a position behind
    the batch in hand starts the pass again."""

    def __init__(
        self,
        tables: RunTables,
        name: str,
        columns: list[str] | None = None,
        batch_rows: int | None = None,
    ) -> None:
        self.tables = tables
        self.name = name
        self.columns = columns
        self.batch_rows = batch_rows or SLICE_ROWS
        self._stream: Iterator[pa.Table] | None = None
        self._batch: pa.Table | None = None
        self._start = 0
        self._next = 0

    def _seek(self, pos: int) -> pa.Table:
        """The batch holding row ``pos``."""
        if self._batch is not None and self._start <= pos < self._next:
            return self._batch
        if self._stream is None or pos < self._start:
            self._stream = iter(self.tables.stream(self.name, self.columns, self.batch_rows))
            self._batch, self._next = None, 0
        while pos >= self._next:
            batch = next(self._stream, None)
            if batch is None:
                raise IndexError(f"row {pos} is past the end of table {self.name!r}")
            self._batch, self._start, self._next = batch, self._next, self._next + batch.num_rows
        assert self._batch is not None
        return self._batch

    def take(self, pos: np.ndarray) -> pa.Table:
        """The rows at positions ``pos`` (int64, any order), in that order."""
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        parts = []
        i = 0
        while i < len(sorted_pos):
            batch = self._seek(int(sorted_pos[i]))
            j = int(np.searchsorted(sorted_pos, self._next, side="left"))
            parts.append(take(batch, sorted_pos[i:j] - self._start))
            i = j
        schema = self.tables.schema(self.name)
        if self.columns is not None:
            schema = pa.schema([schema.field(c) for c in self.columns])
        return _in_order(pa.concat_tables([schema.empty_table(), *parts]), pos, order)


def _in_order(got: pa.Table, pos: np.ndarray, order: np.ndarray) -> pa.Table:
    """Rows ``got`` in sorted position order (``order`` sorts ``pos``) put back in the
    order of ``pos`` (no copy when ``pos`` was sorted already)."""
    if len(pos) < 2 or bool((np.diff(pos) >= 0).all()):
        return got
    back = np.empty(len(pos), dtype=np.int64)
    back[order] = np.arange(len(pos))
    return take(got, back)


def rows_in_slices(
    tables: RunTables, name: str, columns: Sequence[str], pos: np.ndarray
) -> Iterator[pa.Table]:
    """The rows (``columns`` of them) of a table at positions ``pos`` (int64, any
    order), in that order, ``SLICE_ROWS`` at a time, after one pass over the table.

    The pass hands each row to the slice it belongs to, spilled to a temporary file
    (Arrow IPC, deleted when the slices are done), so what is held is a batch of the
    table, then one slice: not every row asked for."""
    step = SLICE_ROWS
    n = len(pos)
    order = np.argsort(pos, kind="stable")
    sorted_pos = pos[order]
    schema = tables.schema(name)
    schema = pa.schema([schema.field(c) for c in columns])
    spilled = schema.append(pa.field("_at", pa.int64()))
    with tempfile.TemporaryDirectory(prefix="nhr-slices-") as tmp:
        paths = [Path(tmp) / f"{k}.arrow" for k in range(-(-n // step))]
        writers = [pa.ipc.new_file(str(path), spilled) for path in paths]
        try:
            lo = 0
            for batch in tables.stream(name, list(columns)):
                i, j = np.searchsorted(sorted_pos, [lo, lo + batch.num_rows])
                if j > i:
                    rows = take(batch, sorted_pos[i:j] - lo)
                    rows = rows.append_column("_at", pa.array(order[i:j], pa.int64()))
                    slice_of = order[i:j] // step
                    for k in np.unique(slice_of):
                        writers[k].write_table(rows.filter(pa.array(slice_of == k)))
                lo += batch.num_rows
        finally:
            for writer in writers:
                writer.close()
        if n and (sorted_pos[-1] >= lo or sorted_pos[0] < 0):
            raise IndexError(f"a row asked for is not in table {name!r} ({lo} rows)")
        for k, path in enumerate(paths):
            with pa.OSFile(str(path)) as source:
                got = pa.ipc.open_file(source).read_all()
            at = got.column("_at").to_numpy() - k * step
            back = np.empty(len(at), dtype=np.int64)
            back[at] = np.arange(len(at))
            yield take(got.drop_columns(["_at"]), back).combine_chunks()
            path.unlink()


class SpilledRows:
    """A table held on local disk, not in memory: written once to a temporary Arrow IPC
    file in record batches of ``batch_rows``, and taken back by position a batch at a
    time, so what is held is one batch and the rows asked for. For columns read back a
    few rows at a time over a long step (the edit plan's image paths, read per chunk of
    jobs for the whole search). The file is deleted with the object."""

    def __init__(self, table: pa.Table, batch_rows: int = SLICE_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        self.schema = table.schema
        self.num_rows = table.num_rows
        self.batch_rows = batch_rows
        fd, path = tempfile.mkstemp(prefix="nhr-spill-", suffix=".arrow")
        os.close(fd)
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, path)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, self.schema) as writer:
            for lo in range(0, table.num_rows, batch_rows):
                writer.write_table(table.slice(lo, batch_rows).combine_chunks())
        self._source = pa.OSFile(path)
        self._reader = pa.ipc.open_file(self._source)

    def __len__(self) -> int:
        return self.num_rows

    def __getstate__(self) -> dict[str, object]:
        raise TypeError("SpilledRows lives in a local temporary file: it cannot be pickled")

    def take(self, pos: np.ndarray) -> pa.Table:
        """The rows at positions ``pos`` (int64, any order, repeats allowed), in that
        order."""
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) and (int(pos.min()) < 0 or int(pos.max()) >= self.num_rows):
            raise IndexError(f"a row asked for is not among the {self.num_rows} spilled rows")
        order = np.argsort(pos, kind="stable")
        sorted_pos = pos[order]
        bounds = np.searchsorted(
            sorted_pos, np.arange(0, self.num_rows + self.batch_rows, self.batch_rows)
        )
        parts = [self.schema.empty_table()]
        for b in np.flatnonzero(np.diff(bounds)):
            i, j = bounds[b], bounds[b + 1]
            batch = pa.Table.from_batches([self._reader.get_batch(int(b))])
            parts.append(take(batch, sorted_pos[i:j] - b * self.batch_rows))
        return _in_order(pa.concat_tables(parts).combine_chunks(), pos, order)

    def close(self) -> None:
        """Delete the file (also done when the object is collected)."""
        self._source.close()
        self._finalizer()


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


__all__ = ["SLICE_ROWS", "RowsAt", "SpilledRows", "rows_in_slices", "rows_where"]
