"""Runs one stage over its input rows: batches, resume, progress bar, per-stage stats.

Inputs come as a list of records, an Arrow table of the stage's input type, or an
iterable of chunks (each a list of records or a table), so a plan far larger than memory
can stream through. The runner skips input keys the table's ledger already covers, so a
rerun after a crash repeats nothing and loses nothing; it builds records only for
``process_batch``, and buffers outputs into shards of many rows (a shard closes by rows,
bytes or seconds; each is committed by a ledger entry with the keys it covers, the
seconds it took and the API usage). Batches run in an executor (``nhr.executors``):
worker processes for CPU-bound stages, threads for API-bound ones, up to ``workers``
batches at once (0: one per core); the runner alone writes shards. Stats come from the
ledger, never from re-reading rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nhr.errors import RunFolderError
from nhr.executors import BatchDone, executor_for
from nhr.hashing import DoneKeys, KeySet, fingerprints
from nhr.lock import ObjectLock, RunLock
from nhr.records import Record, from_table
from nhr.stages.base import Stage
from nhr.store import RunStore
from nhr.store.shards import FLUSH_SECONDS, SHARD_BYTES, SHARD_ROWS, LedgerEntry, ShardWriter

PARENT_ENV = "NHR_RUN_PID"
WRITER_LOCK = ".nhr-writer.lock"
GROUP_ROWS = 4096  # pending rows turned into records at once

# what a runner accepts as a stage's input
Chunk = list[Record] | pa.Table
Inputs = list[Record] | pa.Table | Iterable[Chunk]


@dataclass
class StageResult:
    """What a stage run produced: its table's name and stats (read rows from the store)."""

    table: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_out(self) -> int:
        """Rows in the stage's table."""
        return int(self.stats.get("rows_out", 0))

    @property
    def rows_in(self) -> int:
        """Input rows the stage was given."""
        return int(self.stats.get("rows_in", 0))


def settings_hash(settings: dict[str, Any]) -> str:
    """A short, stable hash of a stage's settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parent_alive() -> bool:
    """False when this process was started by `nhr run` (its pid in the environment)
    and that process is gone: a kernel orphaned by a killed run must stop writing."""
    pid = os.environ.get(PARENT_ENV)
    if not pid:
        return True
    return os.getppid() == int(pid)


def ledger_stats(entries: list[LedgerEntry]) -> dict[str, Any]:
    """Rows out, seconds, usage, drops by reason and errors by kind summed over entries."""
    drops: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    usage: Counter[str] = Counter()
    seconds = 0.0
    for e in entries:
        drops.update(e.info.get("drops_by_reason", {}))
        errors.update(e.info.get("errors_by_kind", {}))
        usage.update(e.info.get("usage", {}))
        seconds += float(e.info.get("seconds", 0.0))
    return {
        "rows_out": sum(e.rows for e in entries),
        "seconds": seconds,
        "usage": usage,
        "drops_by_reason": dict(sorted(drops.items())),
        "errors_by_kind": dict(sorted(errors.items())),
    }


class _Group:
    """Up to a few thousand pending rows of a chunk, turned into records once, when the
    first of their batches is scheduled (one column-wise conversion, not one per batch)."""

    def __init__(self, chunk: Chunk, idx: np.ndarray) -> None:
        self.chunk = chunk
        self.idx = idx
        self._records: list[Record] | None = None

    def records(self, cls: type[Record]) -> list[Record]:
        """The group's records (typed ``cls``), built on first use."""
        if self._records is None:
            if isinstance(self.chunk, pa.Table):
                self._records = from_table(self.chunk.take(pa.array(self.idx)), cls)
            else:
                self._records = [self.chunk[j] for j in self.idx]
        return self._records


@dataclass
class _Batch:
    """A batch of pending inputs: rows ``start:stop`` of a group, whose chunk's keys are
    ``chunk_keys``; its records are built only when it is scheduled."""

    group: _Group
    chunk_keys: pa.Array
    start: int
    stop: int
    records: list[Record] = field(default_factory=list)

    def build(self, cls: type[Record]) -> _Batch:
        """Build the batch's records (typed ``cls``) for ``process_batch``."""
        self.records = self.group.records(cls)[self.start : self.stop]
        return self

    @property
    def size(self) -> int:
        """Inputs in the batch."""
        return self.stop - self.start

    @property
    def keys(self) -> pa.Array:
        """The batch's input keys."""
        return self.chunk_keys.take(pa.array(self.group.idx[self.start : self.stop]))


def _chunks(inputs: Inputs) -> Iterator[Chunk]:
    """The inputs as chunks (a list of records or a table is one chunk)."""
    if isinstance(inputs, pa.Table | list):
        yield inputs
        return
    yield from inputs


def _chunk_keys(chunk: Chunk, stage: Stage) -> pa.Array:
    """The input keys of a chunk as a string array."""
    if isinstance(chunk, pa.Table):
        column = chunk.column(stage.input_type.key)
        return (
            column.combine_chunks().cast(pa.string())
            if column.num_chunks
            else pa.array([], pa.string())
        )
    return pa.array([r.id for r in chunk], pa.string())


class Runner:
    """Runs stages against a run store.

    ``batch_size`` rows go to each ``process_batch`` call, ``workers`` calls may be in
    flight; outputs are committed in shards of ``shard_rows`` rows or ``shard_bytes``
    bytes, or after ``flush_seconds`` (a crash loses at most about that much work).
    None of these change a table's rows, only how it is computed and split into files.
    """

    def __init__(
        self,
        store: RunStore,
        batch_size: int = 16,
        workers: int = 1,
        progress: bool = True,
        shard_rows: int = SHARD_ROWS,
        shard_bytes: int = SHARD_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.flush_seconds = flush_seconds

    def writing(self, what: str) -> RunLock | ObjectLock:
        """The writer lock of the run folder, for whole-table steps outside ``run``."""
        return self.store.lock(WRITER_LOCK, what, wait_seconds=3.0)

    def recorded(self, stage: Stage, expected: str) -> list[LedgerEntry]:
        """The stage's committed ledger entries, refusing ones made with other settings."""
        entries = self.store.tables.entries(stage.name)
        for entry in entries:
            if entry.info.get("settings_hash") != expected:
                raise RunFolderError(
                    f"table {stage.name!r} in {self.store.root} was written with other "
                    f"settings ({entry.name}: {entry.info.get('settings')} vs "
                    f"{stage.settings()})",
                    f"use a new run folder, or delete {self.store.tables.folder(stage.name)} "
                    "to redo that stage",
                )
        return entries

    def run(
        self,
        stage: Stage,
        inputs: Inputs,
        budget_seconds: float = 0.0,
        extra_stats: dict[str, Any] | None = None,
    ) -> StageResult:
        """Run ``stage`` over ``inputs`` (resuming), write its stats, return its table.

        ``inputs`` is a list of records, a ``pa.Table`` of the stage's input type, or an
        iterable of chunks (each a list or a table; ``len(inputs)``, when it has one, sets
        the progress bar's total). ``budget_seconds`` > 0 stops starting new batches once
        the stage's recorded seconds reach it (the paper's GPU-hour cap); what is left is
        counted as ``not_scheduled``.
        """
        with self.writing(f"stage {stage.name}"):
            return self._run(stage, inputs, budget_seconds, extra_stats)

    def _run(
        self,
        stage: Stage,
        inputs: Inputs,
        budget_seconds: float,
        extra_stats: dict[str, Any] | None,
    ) -> StageResult:
        """The body of ``run``, under the writer lock."""
        started = time.perf_counter()
        settings = stage.settings()
        expected = settings_hash(settings)
        tables = self.store.tables
        tables.clean(stage.name)
        before = ledger_stats(self.recorded(stage, expected))
        done = DoneKeys(tables.input_keys(stage.name))
        writer = tables.writer(
            stage.name,
            {"settings_hash": expected, "settings": settings},
            self.shard_rows,
            self.shard_bytes,
            self.flush_seconds,
            stage.output_type,
        )
        counts = Counter[str]()
        try:
            total = len(inputs)  # type: ignore[arg-type]
        except TypeError:
            total = None
        bar = tqdm(
            total=total,
            desc=stage.name,
            unit="row",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            batches = self._pending(stage, inputs, done, counts, bar)
            self._run_batches(
                stage, batches, writer, before["seconds"], budget_seconds, bar, counts
            )
        except BaseException:
            writer.flush()
            raise
        finally:
            bar.close()
        writer.flush()
        after = ledger_stats(tables.entries(stage.name))
        pending = counts["rows_in"] - counts["resumed"]
        stats = {
            "stage": stage.name,
            "rows_in": counts["rows_in"],
            "rows_out": after["rows_out"],
            "resumed_rows": counts["resumed"],
            "processed_rows": counts["processed"],
            "not_scheduled": pending - counts["processed"],
            "drops_by_reason": after["drops_by_reason"],
            "seconds": round(after["seconds"], 3),
            "wall_seconds_last_call": round(time.perf_counter() - started, 3),
            "errors_by_kind": after["errors_by_kind"],
            "usage": {k: round(v, 6) for k, v in sorted(after["usage"].items())},
            "settings": settings,
            "shards": len(tables.entries(stage.name)),
            **(extra_stats or {}),
        }
        self.store.write_stats(stage.name, stats)
        return StageResult(stage.name, stats)

    def _pending(
        self, stage: Stage, inputs: Inputs, done: DoneKeys, counts: Counter[str], bar: tqdm
    ) -> Iterator[_Batch]:
        """The batches still to do, chunk by chunk: duplicate keys refused, done keys
        skipped (counted), records built only for what is pending."""
        seen = KeySet()
        for chunk in _chunks(inputs):
            keys = _chunk_keys(chunk, stage)
            fps = fingerprints(keys)
            dup = seen.add(fps)
            if dup >= 0:
                raise ValueError(
                    f"stage {stage.name}: input key {keys[dup].as_py()!r} occurs twice"
                )
            counts["rows_in"] += len(keys)
            is_done = done.mask(keys, fps)
            n_done = int(is_done.sum())
            if n_done:
                counts["resumed"] += n_done
                bar.update(n_done)
            todo = np.flatnonzero(~is_done)
            step = self.batch_size * max(1, GROUP_ROWS // self.batch_size)
            for g in range(0, len(todo), step):
                group = _Group(chunk, todo[g : g + step])
                for i in range(0, len(group.idx), self.batch_size):
                    yield _Batch(group, keys, i, min(i + self.batch_size, len(group.idx)))

    def _run_batches(
        self,
        stage: Stage,
        batches: Iterator[_Batch],
        writer: ShardWriter,
        spent: float,
        budget_seconds: float,
        bar: tqdm,
        counts: Counter[str],
    ) -> None:
        """Process batches in the stage's executor (worker processes for cpu work,
        threads otherwise), up to its slots in flight; buffer each as it finishes, with
        the API usage it added. Once the budget is spent, the remaining inputs are still
        read (to count them), not processed."""
        in_flight: set[Future[BatchDone]] = set()
        exhausted = False
        with executor_for(stage, self.workers) as pool:
            while True:
                while not exhausted and len(in_flight) < pool.slots:
                    if budget_seconds and spent >= budget_seconds:
                        for _ in batches:  # count the rest, schedule none
                            pass
                        exhausted = True
                        break
                    batch = next(batches, None)
                    if batch is None:
                        exhausted = True
                        break
                    if not parent_alive():
                        raise RunFolderError(
                            "the `nhr run` that started this kernel is gone",
                            "rerun `nhr run`; it resumes where this stopped",
                        )
                    in_flight.add(pool.submit(batch.build(stage.input_type).records, batch))
                if not in_flight:
                    break
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    done = future.result()
                    batch = done.tag
                    self._check(stage, done.outputs)
                    writer.add(done.outputs, batch.keys, done.seconds, done.usage)
                    spent += done.seconds
                    counts["processed"] += batch.size
                    bar.update(batch.size)

    @staticmethod
    def _check(stage: Stage, out: list[Record]) -> None:
        """Refuse outputs of the wrong type, naming the stage."""
        for row in out:
            if not isinstance(row, stage.output_type):
                raise TypeError(
                    f"stage {stage.name} returned {type(row).__name__}, "
                    f"expected {stage.output_type.__name__}"
                )
