"""Runs one stage over its input rows: batches, resume, progress bar, per-stage stats.

The runner skips input keys already covered by a finished shard, so a rerun after a
crash repeats nothing and loses nothing. Each batch's output is written as one shard
(temp file, then rename) that records the keys it covers and the seconds it took.
Batches run in an executor (``nhr.executors``): worker processes for CPU-bound stages,
threads for API-bound ones, up to ``workers`` batches at once (0: one per core); the
runner alone writes shards, as each batch finishes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from nhr.errors import RunFolderError
from nhr.executors import BatchDone, executor_for
from nhr.lock import RunLock
from nhr.records import Record, from_table, to_table
from nhr.stages.base import Stage
from nhr.store import RunStore

PARENT_ENV = "NHR_RUN_PID"
WRITER_LOCK = ".nhr-writer.lock"


@dataclass
class StageResult:
    """What a stage run produced: all output rows of its table, and its stats."""

    table: str
    rows: list[Any]
    stats: dict[str, Any] = field(default_factory=dict)


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


def drops_by_reason(rows: list[Any]) -> dict[str, int]:
    """Count failed verdicts by reason (rows without a ``passed`` field drop nothing)."""
    counts = Counter(r.reason for r in rows if hasattr(r, "passed") and not r.passed)
    return dict(sorted(counts.items()))


def errors_by_kind(rows: list[Any]) -> dict[str, int]:
    """Count judge errors by kind (the text before the first colon of ``error``)."""
    counts = Counter(
        str(r.error).split(":", 1)[0] for r in rows if getattr(r, "error", None) is not None
    )
    return dict(sorted(counts.items()))


class Runner:
    """Runs stages against a run store."""

    def __init__(
        self,
        store: RunStore,
        batch_size: int = 16,
        workers: int = 1,
        progress: bool = True,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress

    def writing(self, what: str) -> RunLock:
        """The writer lock of the run folder, for whole-table steps outside ``run``."""
        return RunLock(self.store.root / WRITER_LOCK, what, wait_seconds=3.0)

    def recorded(self, stage: Stage, expected: str) -> tuple[set[str], float, Counter[str]]:
        """What a stage's shards record so far: the input keys covered, the editor/judge
        seconds spent and the API usage (so budgets and costs survive resumes)."""
        done: set[str] = set()
        seconds = 0.0
        usage: Counter[str] = Counter()
        for path, keys, info in self.store.tables.iter_meta(stage.name):
            if info.get("settings_hash") != expected:
                raise RunFolderError(
                    f"table {stage.name!r} in {self.store.root} was written with other "
                    f"settings ({path.name}: {info.get('settings')} vs {stage.settings()})",
                    f"use a new run folder, or delete {self.store.tables.folder(stage.name)} "
                    "to redo that stage",
                )
            done.update(keys)
            seconds += float(info.get("seconds", 0.0))
            usage.update(info.get("usage", {}))
        return done, seconds, usage

    def run(
        self,
        stage: Stage,
        inputs: list[Record],
        budget_seconds: float = 0.0,
        extra_stats: dict[str, Any] | None = None,
    ) -> StageResult:
        """Run ``stage`` over ``inputs`` (resuming), write its stats, return its table.

        ``budget_seconds`` > 0 stops starting new batches once the stage's recorded
        seconds reach it (the paper's GPU-hour cap); what is left is counted as
        ``not_scheduled``.
        """
        with self.writing(f"stage {stage.name}"):
            return self._run(stage, inputs, budget_seconds, extra_stats)

    def _run(
        self,
        stage: Stage,
        inputs: list[Record],
        budget_seconds: float,
        extra_stats: dict[str, Any] | None,
    ) -> StageResult:
        """The body of ``run``, under the writer lock."""
        started = time.perf_counter()
        settings = stage.settings()
        expected = settings_hash(settings)
        keys = [r.id for r in inputs]
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in Counter(keys).items() if n > 1)
            raise ValueError(f"stage {stage.name}: input key {dup!r} occurs twice")
        done, spent, usage = self.recorded(stage, expected)
        pending = [r for r in inputs if r.id not in done]
        batches = [
            pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size)
        ]
        processed = 0
        if batches:
            bar = tqdm(
                total=len(inputs),
                initial=len(inputs) - len(pending),
                desc=stage.name,
                unit="row",
                disable=not self.progress,
                dynamic_ncols=True,
            )
            try:
                spent, processed = self._run_batches(
                    stage, batches, expected, settings, spent, budget_seconds, bar, usage
                )
            finally:
                bar.close()
        table = self.store.tables.read(stage.name, stage.output_type.schema())
        rows = from_table(table, stage.output_type)
        stats = {
            "stage": stage.name,
            "rows_in": len(inputs),
            "rows_out": len(rows),
            "resumed_rows": len(inputs) - len(pending),
            "processed_rows": processed,
            "not_scheduled": len(pending) - processed,
            "drops_by_reason": drops_by_reason(rows),
            "seconds": round(spent, 3),
            "wall_seconds_last_call": round(time.perf_counter() - started, 3),
            "errors_by_kind": errors_by_kind(rows),
            "usage": {k: round(v, 6) for k, v in sorted(usage.items())},
            "settings": settings,
            **(extra_stats or {}),
        }
        self.store.write_stats(stage.name, stats)
        return StageResult(stage.name, rows, stats)

    def _run_batches(
        self,
        stage: Stage,
        batches: list[list[Record]],
        expected: str,
        settings: dict[str, Any],
        spent: float,
        budget_seconds: float,
        bar: tqdm,
        usage: Counter[str],
    ) -> tuple[float, int]:
        """Process batches in the stage's executor, up to its slots in flight; write each
        as it finishes, with the API usage it added (also added to ``usage``)."""
        processed = 0
        queue = list(reversed(batches))
        in_flight: set[Future[BatchDone]] = set()
        with executor_for(stage, self.workers) as pool:
            while queue or in_flight:
                while (
                    queue
                    and len(in_flight) < pool.slots
                    and not (budget_seconds and spent >= budget_seconds)
                ):
                    if not parent_alive():
                        raise RunFolderError(
                            "the `nhr run` that started this kernel is gone",
                            "rerun `nhr run`; it resumes where this stopped",
                        )
                    in_flight.add(pool.submit(queue.pop()))
                if not in_flight:
                    break
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    done = future.result()
                    usage.update(done.usage)
                    self._write(stage, done, expected, settings)
                    spent += done.seconds
                    processed += len(done.batch)
                    bar.update(len(done.batch))
        return spent, processed

    def _write(
        self,
        stage: Stage,
        done: BatchDone,
        expected: str,
        settings: dict[str, Any],
    ) -> None:
        """Write one batch's output shard, named after the keys it covers."""
        batch, out = done.batch, done.outputs
        for row in out:
            if not isinstance(row, stage.output_type):
                raise TypeError(
                    f"stage {stage.name} returned {type(row).__name__}, "
                    f"expected {stage.output_type.__name__}"
                )
        keys = [r.id for r in batch]
        shard = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:20]
        info = {
            "usage": done.usage,
            "settings_hash": expected,
            "settings": settings,
            "seconds": done.seconds,
            "rows_in": len(batch),
            "rows_out": len(out),
        }
        self.store.tables.write_shard(
            stage.name, shard, to_table(out, stage.output_type), keys, info
        )
