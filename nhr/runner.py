"""Runs stages over their input rows: batches, resume, progress bars, per-stage stats.

``run`` runs one stage; ``run_chain`` streams a chain of them (``nhr.engines.base``):
link 0 reads the given inputs, each later link takes what the link before it forwards,
as its batches finish, and every stage writes its own table and stats as ``run`` does.

Inputs come as a list of records, an Arrow table of the stage's input type, or an
iterable of chunks (each a list of records or a table), so a plan far larger than memory
can stream through. An iterable may yield ``PAUSE``: it has nothing more right now, and
more comes once batches in flight finish (inputs that depend on results, such as an
adaptive search's next seeds, seen through ``run_chain``'s ``observe``). The runner
skips input keys the table's ledger already covers, so a rerun after a crash repeats
nothing and loses nothing; it builds records only for ``process_batch``, and buffers
outputs into shards of many rows (a shard closes by rows, bytes or seconds; each is
committed by a ledger entry with the keys it covers, the seconds it took and the API
usage). An engine computes the batches (by default the ``LocalEngine``: worker
processes for CPU-bound stages, threads for API-bound ones, up to ``workers`` batches at
once per stage, 0: one per core); the runner alone writes shards, and drops a batch
whose input keys it already committed (a retried task).

In a chain, a batch is committed only once every row it forwarded is committed
downstream, so after a SIGKILL anywhere the rerun redoes exactly the batches whose work
is not all committed, and the forwards skip what the next link already has. Stats come
from the ledger, never from re-reading rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from nhr.allocators import give_back
from nhr.engines.base import Done, Engine, Forward, Link
from nhr.engines.local import LocalEngine
from nhr.errors import DistrustedOutputs, RunFolderError
from nhr.hashing import KeyIndex, KeySet, fingerprints
from nhr.lock import ObjectLock, RunLock
from nhr.records import Record, from_table
from nhr.stages.base import Stage
from nhr.store import RunStore
from nhr.store.shards import FLUSH_SECONDS, SHARD_BYTES, SHARD_ROWS, LedgerEntry
from nhr.tables import RunTables

PARENT_ENV = "NHR_RUN_PID"
WRITER_LOCK = ".nhr-writer.lock"
GROUP_ROWS = 4096  # pending rows turned into records at once


class _Pause:
    """The type of ``PAUSE``."""

    def __repr__(self) -> str:
        return "PAUSE"


# yielded by an input iterable: nothing more now; ask again once a batch in flight ends
PAUSE = _Pause()

# what a runner accepts as a stage's input
Chunk = list[Record] | pa.Table
Inputs = list[Record] | pa.Table | Iterable[Chunk | _Pause]
# figures a caller adds to a stage's stats: a dict, or a function called once the run ends
Extra = dict[str, Any] | Callable[[], dict[str, Any]] | None


def extra_figures(extra: Extra) -> dict[str, Any]:
    """The figures of an ``Extra``."""
    if extra is None:
        return {}
    return extra() if callable(extra) else extra


@dataclass
class TableParts:
    """A whole-table step's output given a part at a time (``Runner.whole_table``
    writes each as it comes, so the step holds a part, not its table); ``schema`` types
    the table when there is no part."""

    parts: Iterable[pa.Table]
    schema: pa.Schema


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
    ``chunk_keys`` (fingerprints ``chunk_fps``); its records are built only when it is
    scheduled."""

    group: _Group
    chunk_keys: pa.Array
    chunk_fps: np.ndarray
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

    @property
    def fps(self) -> np.ndarray:
        """The fingerprints of the batch's input keys."""
        return self.chunk_fps[self.group.idx[self.start : self.stop]]


def _chunks(inputs: Inputs) -> Iterator[Chunk | _Pause]:
    """The inputs as chunks (a list of records or a table is one chunk), and the
    ``PAUSE``s of an iterable."""
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


class _SkipDone:
    """A link's forward without the rows the next link committed in an earlier run: a
    batch redone after a crash would otherwise send them again. Picklable (a distributed
    engine sends it to workers): the keys travel as an Arrow array and are hashed where
    the forward runs, fingerprints being valid within one process only."""

    def __init__(self, forward: Forward, keys: pa.Array) -> None:
        self.forward = forward
        self.keys = keys
        self._done: KeyIndex | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"forward": self.forward, "keys": self.keys}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.forward, self.keys, self._done = state["forward"], state["keys"], None

    def __call__(self, inputs: list[Record], outputs: list[Record]) -> list[Record]:
        rows = self.forward(inputs, outputs)
        if not rows:
            return rows
        if self._done is None:
            self._done = KeyIndex(self.keys)
        keys = pa.array([r.id for r in rows], pa.string())
        done = self._done.mask(keys, fingerprints(keys))
        return [r for r, d in zip(rows, done, strict=True) if not d] if done.any() else rows


@dataclass
class _Call:
    """A call of link 0's batcher in flight: its records, their keys and fingerprints."""

    records: list[Record]
    keys: pa.Array
    fps: np.ndarray


class _Taken:
    """The input keys of the batches a link accepted in this run, as fingerprints:
    gathered loose and merged into a ``KeySet`` only when asked (a link whose batches
    are known new never pays for the lookups)."""

    def __init__(self) -> None:
        self._set = KeySet()
        self._loose: list[np.ndarray] = []

    def add(self, fps: np.ndarray) -> None:
        self._loose.append(fps)

    def contains(self, fps: np.ndarray) -> np.ndarray:
        if self._loose:
            self._set.add(np.concatenate(self._loose))
            self._loose = []
        return self._set.contains(fps)


class _Node:
    """An accepted batch of one link until it is committed: what its writer needs (its
    outputs, seconds and usage; not its inputs), its input keys, and how many of the
    rows it forwarded are not yet committed downstream (a batch is committed only after
    everything it forwarded is, so a crash never leaves committed rows whose downstream
    work is lost)."""

    __slots__ = ("key_array", "keys", "open", "outputs", "seconds", "usage")

    def __init__(self, done: Done, keys: list[str] | None, key_array: pa.Array) -> None:
        self.outputs = done.outputs
        self.seconds = done.seconds
        self.usage = done.usage
        self.keys = keys
        self.key_array = key_array
        self.open = 0


class _LinkRun:
    """One link's table during a chain run: its writer, the keys it had and has taken,
    the counts of its stats, its progress bar, and what waits to be committed."""

    def __init__(self, runner: Runner, index: int, link: Link, total: int | None) -> None:
        stage = link.stage
        tables = runner.store.tables
        self.link = link
        self.stage = stage
        self.settings = stage.settings()
        expected = settings_hash(self.settings)
        tables.clean(stage.name)
        self.before = ledger_stats(runner.recorded(stage, expected))
        self.done = KeyIndex(tables.input_keys(stage.name))
        self.writer = tables.writer(
            stage.name,
            {"settings_hash": expected, "settings": self.settings},
            runner.shard_rows,
            runner.shard_bytes,
            runner.flush_seconds,
            stage.output_type,
        )
        self.counts = Counter[str]()
        self.spent = float(self.before["seconds"])
        self.taken = _Taken()  # input keys of the batches accepted in this run
        self.uncommitted: set[str] = set()  # of those, the ones not committed yet
        self.parents: dict[str, _Node] = {}  # input key -> the upstream batch that sent it
        self.pending: list[_Node] = []  # in the writer's buffer
        self.since: float | None = None  # when the writer's buffer got its first batch
        self.bar = _Progress(stage.name, index, total, runner.progress)


class _Progress:
    """A link's progress bar, drawn only once the link processes a row (a stage with
    nothing to do, every input resumed, draws none)."""

    def __init__(self, name: str, position: int, total: int | None, show: bool) -> None:
        self.name, self.position, self.total, self.show = name, position, total, show
        self.resumed = 0
        self._bar: tqdm | None = None

    def skip(self, n: int) -> None:
        """``n`` inputs were resumed (done in an earlier run)."""
        self.resumed += n
        if self._bar is not None:
            self._bar.update(n)

    def grow(self, n: int) -> None:
        """``n`` more inputs were given."""
        self.total = (self.total or 0) + n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, n: int) -> None:
        """``n`` inputs were processed."""
        if self._bar is None and self.show:
            self._bar = tqdm(
                total=self.total,
                initial=self.resumed,
                desc=self.name,
                unit="row",
                position=self.position,
                dynamic_ncols=True,
            )
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _ChainRun:
    """The body of ``Runner.run_chain``, under the writer lock: feeds link 0's pending
    inputs to the engine, commits what it yields, writes every link's stats."""

    def __init__(
        self,
        runner: Runner,
        links: Sequence[Link],
        inputs: Inputs,
        budget_seconds: float,
        extra_stats: Sequence[Extra],
        observe: Callable[[Done], None] | None = None,
    ) -> None:
        self.runner = runner
        self.links = list(links)
        self.inputs = inputs
        self.budget = budget_seconds
        self.extra = extra_stats
        self.observe = observe
        self.distrusted: int | None = None  # a link whose observer raised DistrustedOutputs
        self.unflushable = 0  # rows held open right after the last commit of every buffer
        self.states: list[_LinkRun] = []
        # link 0's calls in flight, by the id of the list fed to the engine, where the
        # engine hands back the very lists it was fed (``Engine.hands_back_fed_lists``):
        # then a list handed back that is not in flight was taken already, and link 0
        # keeps no set of the keys it took
        self.fed: dict[int, _Batch | _Call] | None = (
            {} if runner.engine.hands_back_fed_lists else None
        )

    def run(self) -> list[StageResult]:
        started = time.perf_counter()
        try:
            total = len(self.inputs)  # type: ignore[arg-type]
        except TypeError:
            total = None
        try:
            for i, link in enumerate(self.links):
                self.states.append(_LinkRun(self.runner, i, link, total if i == 0 else None))
            engine_links = self._engine_links()
            for state in self.states[1:]:
                state.counts["resumed"] = len(state.done)
                state.bar.grow(len(state.done))
                state.bar.skip(len(state.done))
            try:
                stream = self.runner.engine.stream(engine_links, self._feed())
                try:
                    for done in stream:
                        self._take(done)
                finally:
                    close = getattr(stream, "close", None)
                    if callable(close):
                        close()
            except BaseException:
                self._flush_all()
                raise
            self._flush_all()
        finally:
            for state in self.states:
                state.bar.close()
        wall = time.perf_counter() - started
        engine = self.runner.engine.describe()
        return [self._stats(i, state, wall, engine) for i, state in enumerate(self.states)]

    def _engine_links(self) -> list[Link]:
        """The links as the engine gets them: each forward skips the rows its next link
        committed in an earlier run."""
        out = []
        for i, link in enumerate(self.links):
            if link.forward is not None and i + 1 < len(self.links):
                done = self.states[i + 1].done
                if len(done):
                    link = replace(link, forward=_SkipDone(link.forward, done.keys))
            out.append(link)
        self.links = out
        return out

    def _feed(self) -> Iterator[list[Record]]:
        """Link 0's pending inputs as calls (its batcher's, or slices of its batch
        size), and an empty call for each ``PAUSE`` of the inputs (a batcher sees the
        inputs between two pauses as a whole); once link 0's budget is spent, the rest
        is read (to count it), not fed."""
        state = self.states[0]
        link = self.links[0]
        cls = link.stage.input_type
        pending = self.runner._pending(
            link.stage, self.inputs, state.done, state.counts, state.bar, link.batch_size
        )
        paused = False

        def segment() -> Iterator[Record]:
            nonlocal paused
            for b in pending:
                if b is None:
                    paused = True
                    return
                yield from b.build(cls).records

        while True:
            paused = False
            if link.batcher is None:
                calls: Iterator[list[Record]] = (
                    self._fed_call(b.build(cls)) if b is not None else [] for b in pending
                )
            else:
                calls = map(self._batched_call, link.batcher(segment(), link.batch_size))
            for call in calls:
                if self.budget and state.spent >= self.budget:
                    for b in pending:  # count the rest (up to a pause), feed none
                        if b is None:
                            break
                    return
                if not parent_alive():
                    raise RunFolderError(
                        "the `nhr run` that started this kernel is gone",
                        "rerun `nhr run`; it resumes where this stopped",
                    )
                yield call
            if not paused:
                return
            yield []  # the inputs paused: the engine asks again once a batch finishes

    def _fed_call(self, batch: _Batch) -> list[Record]:
        """A batch's records, remembered with its keys while in flight (see ``fed``)."""
        if self.fed is not None:
            self.fed[id(batch.records)] = batch
        return batch.records

    def _batched_call(self, call: list[Record]) -> list[Record]:
        """A call of link 0's batcher, remembered with its keys while in flight."""
        if self.fed is not None:
            keys = pa.array([r.id for r in call], pa.string())
            self.fed[id(call)] = _Call(call, keys, fingerprints(keys))
        return call

    def _keys(self, done: Done) -> tuple[pa.Array, np.ndarray, bool | None]:
        """A finished batch's input keys, their fingerprints, and whether the batch is
        known new (True: one of link 0's calls, handed back for the first time; False:
        one of link 0's, handed back again; None: not known)."""
        if done.link == 0 and self.fed is not None:
            call = self.fed.pop(id(done.inputs), None)
            if call is not None and call.records is done.inputs:
                return call.keys, call.fps, True
            keys = pa.array([r.id for r in done.inputs], pa.string())
            return keys, fingerprints(keys), False
        keys = pa.array([r.id for r in done.inputs], pa.string())
        return keys, fingerprints(keys), None

    def _take(self, done: Done) -> None:
        """Accept a finished batch (or drop it: its inputs are taken already), send what
        it forwards downstream, and buffer it once nothing it forwarded is open."""
        i = done.link
        state = self.states[i]
        key_array, fps, known = self._keys(done)
        keys = key_array.to_pylist() if i else None
        new = bool(known)
        if i:  # rows sent to this link and not yet taken are new
            new = all(k in state.parents and k not in state.uncommitted for k in keys)
        if new:
            taken = np.zeros(len(fps), dtype=bool)
        elif known is False:  # a call of link 0 handed back again
            taken = np.ones(len(fps), dtype=bool)
        else:
            taken = state.taken.contains(fps)
        if i:  # link 0's feed skips what is done; a forward could send it still
            taken |= state.done.mask(key_array, fps)
        if taken.all() and len(taken):  # a retried batch yielded again: its rows are there already
            state.counts["dropped_batches"] += 1
            return
        if taken.any():
            first = key_array[int(np.flatnonzero(taken)[0])].as_py()
            raise RuntimeError(
                f"stage {state.stage.name}: the engine yielded a batch of which some inputs "
                f"(such as {first!r}) are committed already and others not; an engine must "
                "retry whole batches"
            )
        Runner._check(state.stage, done.outputs)
        if i or self.fed is None:  # link 0's calls handed back as fed need no key set
            state.taken.add(fps)
        if self.observe is not None:
            try:
                self.observe(done)
            except DistrustedOutputs:
                self.distrusted = i
                raise
        if keys is not None:  # only a link that has an upstream tracks keys one by one
            state.uncommitted.update(keys)
        state.spent += done.seconds
        state.counts["processed"] += len(key_array)
        state.bar.update(len(key_array))
        node = _Node(done, keys, key_array)
        forward = self.links[i].forward
        if forward is not None and i + 1 < len(self.links):
            self._send(node, forward(done.inputs, done.outputs), self.states[i + 1])
        if not node.open:
            self._write(i, node)
        if len(self.states) > 1:  # one writer flushes by age itself as batches come
            self._flush_stale()
            self._flush_held()

    def _send(self, node: _Node, rows: list[Record], nxt: _LinkRun) -> None:
        """Record the rows a batch forwarded as open until the next link commits them."""
        if not rows:
            return
        keys = [r.id for r in rows]
        key_array = pa.array(keys, pa.string())
        taken = nxt.taken.contains(fingerprints(key_array))
        for key, was_taken in zip(keys, taken, strict=True):
            if (was_taken and key not in nxt.uncommitted) or key in nxt.parents:
                continue  # committed already, or sent already by another batch
            nxt.parents[key] = node
            node.open += 1
        nxt.counts["given"] += len(rows)
        nxt.bar.grow(len(rows))

    def _write(self, i: int, node: _Node) -> None:
        """Buffer a batch in its link's writer (committing a shard when one is due)."""
        state = self.states[i]
        state.pending.append(node)
        if state.since is None:
            state.since = time.monotonic()
        if state.writer.add(node.outputs, node.key_array, node.seconds, node.usage) is not None:
            self._committed(i)

    def _committed(self, i: int) -> None:
        """Link ``i``'s buffer is committed: release upstream batches whose forwarded rows
        are now all committed."""
        state = self.states[i]
        nodes, state.pending, state.since = state.pending, [], None
        for node in nodes:
            if node.keys is None:
                continue
            state.uncommitted.difference_update(node.keys)
            for key in node.keys if state.parents else ():
                parent = state.parents.pop(key, None)
                if parent is not None:
                    parent.open -= 1
                    if not parent.open:
                        self._write(i - 1, parent)

    def _flush(self, i: int) -> None:
        if self.states[i].pending:
            self.states[i].writer.flush()
            self._committed(i)

    def _flush_stale(self) -> None:
        """Commit buffers older than ``flush_seconds`` (a writer flushes by age only when
        it is given a batch; a link whose inputs paused would hold its upstream)."""
        now = time.monotonic()
        for i, state in enumerate(self.states):
            if state.since is not None and now - state.since >= self.runner.flush_seconds:
                self._flush(i)

    def held(self) -> int:
        """Rows forwarded and not yet committed by the link they went to: each keeps its
        upstream batch (and that batch's outputs) in memory."""
        return sum(len(state.parents) for state in self.states[1:])

    def _flush_held(self) -> None:
        """Commit every buffer once the rows held open grow by ``shard_rows`` since the
        last such commit: without it a link waits for the shards downstream of it, which
        close by rows or by age, so what a chain holds would grow with its speed. What
        is held right after a commit (rows in the engine's queues and in flight) is not
        counted against the next."""
        held = self.held()
        if held >= self.runner.shard_rows + self.unflushable:
            self._flush_all()
            self.unflushable = self.held()

    def _flush_all(self) -> None:
        """Commit everything committable, last link first (each commit may release
        batches of the link before it); a distrusted link's buffer is dropped instead,
        so the upstream batches that fed it stay open and are redone by a rerun."""
        for i in range(len(self.states) - 1, -1, -1):
            state = self.states[i]
            if i == self.distrusted:
                state.writer.discard()
                state.pending, state.since = [], None
                continue
            self._flush(i)

    def _stats(self, i: int, state: _LinkRun, wall: float, engine: dict[str, Any]) -> StageResult:
        """Write and return one link's stats, as ``run`` does for one stage, with the
        engine's description of how it ran the chain (``Engine.describe``) and the links
        before it (``upstream``)."""
        tables = self.runner.store.tables
        name = state.stage.name
        after = ledger_stats(tables.entries(name))
        counts = state.counts
        if i == 0:
            rows_in = counts["rows_in"]
            pending = rows_in - counts["resumed"]
        else:
            rows_in = counts["resumed"] + counts["given"]
            pending = counts["given"]
        stats = {
            "stage": name,
            "rows_in": rows_in,
            "rows_out": after["rows_out"],
            "resumed_rows": counts["resumed"],
            "processed_rows": counts["processed"],
            "not_scheduled": pending - counts["processed"],
            "drops_by_reason": after["drops_by_reason"],
            "seconds": round(after["seconds"], 3),
            "wall_seconds_last_call": round(wall, 3),
            "errors_by_kind": after["errors_by_kind"],
            "usage": {k: round(v, 6) for k, v in sorted(after["usage"].items())},
            "settings": state.settings,
            "shards": len(tables.entries(name)),
            "engine": engine,
            "upstream": [link.stage.name for link in self.links[:i]],
            # batches the engine yielded again (a retry), their rows taken already
            **({"dropped_batches": counts["dropped_batches"]} if counts["dropped_batches"] else {}),
            **extra_figures(self.extra[i]),
        }
        recorded = self.runner.store.read_stats(name) or {}
        idle = not counts["processed"] and not stats["not_scheduled"]
        if not (idle and recorded.get("upstream") and not stats["upstream"]):
            # a stage alone that did nothing keeps the record of the chain that ran it
            self.runner.store.write_stats(name, stats)
        return StageResult(name, stats)


class Runner:
    """Runs stages, alone or as a streamed chain, against a run store.

    ``batch_size`` rows go to each ``process_batch`` call of ``run``, ``workers`` calls
    may be in flight per stage (the default engine's bound; 0: one per core); outputs
    are committed in shards of ``shard_rows`` rows or ``shard_bytes`` bytes, or after
    ``flush_seconds`` (a crash loses at most about that much work); a chain also commits
    every link's buffer whenever ``shard_rows`` more rows wait between its links (each
    keeps its upstream batch in memory), so it holds a bounded number of rows whatever
    its speed and its size. None of these change
    a table's rows, only how it is computed and split into files. ``engine`` computes
    the batches (None: a ``LocalEngine`` of ``workers``); the runner alone commits them.
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
        engine: Engine | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.workers = workers
        self.progress = progress
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.flush_seconds = flush_seconds
        self.engine: Engine = engine if engine is not None else LocalEngine(workers)

    def close(self) -> None:
        """Release what the engine holds (workers, actors)."""
        self.engine.close()

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

    def whole_table(
        self,
        table: str,
        inputs: Sequence[str],
        settings: dict[str, Any],
        compute: Callable[[], tuple[pa.Table | TableParts | None, dict[str, Any]]],
        present: Callable[[], bool] | None = None,
    ) -> StageResult:
        """Run a whole-table step under the writer lock: skipped (its recorded stats
        returned) when the fingerprint of its ``inputs`` tables and ``settings`` is the
        one recorded and its output is ``present`` (default: ``table`` exists); else
        ``compute()`` gives the table to write (whole, or as ``TableParts``; None: it
        wrote its own output) and its stats, recorded with the seconds and the
        fingerprint once the table is written (figures may be filled while its parts
        are consumed)."""
        with self.writing(f"step {table}"):
            tables = RunTables(self.store)
            fp = tables.fingerprint(inputs, settings)
            done = tables.done(table, fp)
            if done is not None and (present() if present else tables.exists(table)):
                return StageResult(table, done)
            t0 = time.perf_counter()
            rows, figures = compute()
            if isinstance(rows, TableParts):
                self.store.write_parts(table, rows.parts, rows.schema, fp)
            elif rows is not None:
                self.store.tables.write_table(
                    table, rows, {"settings_hash": "whole-table", "input_fingerprint": fp}
                )
            del rows  # a whole table: its memory goes back before the next step
            give_back()
            stats = {"stage": table, **figures}
            stats.update(seconds=round(time.perf_counter() - t0, 3), input_fingerprint=fp)
            self.store.write_stats(table, stats)
            return StageResult(table, stats)

    def run(
        self,
        stage: Stage,
        inputs: Inputs,
        budget_seconds: float = 0.0,
        extra_stats: Extra = None,
    ) -> StageResult:
        """Run ``stage`` over ``inputs`` (resuming), write its stats, return its table.

        ``inputs`` is a list of records, a ``pa.Table`` of the stage's input type, or an
        iterable of chunks (each a list or a table; ``len(inputs)``, when it has one, sets
        the progress bar's total). ``budget_seconds`` > 0 stops starting new batches once
        the stage's recorded seconds reach it (the paper's GPU-hour cap); what is left is
        counted as ``not_scheduled``.
        """
        link = Link(stage, self.batch_size)
        return self.run_chain([link], inputs, budget_seconds, [extra_stats])[0]

    def run_chain(
        self,
        links: Sequence[Link],
        inputs: Inputs,
        budget_seconds: float = 0.0,
        extra_stats: Sequence[Extra] | None = None,
        observe: Callable[[Done], None] | None = None,
    ) -> list[StageResult]:
        """Run a chain of stages, streamed: ``inputs`` (as for ``run``) feed link 0, and
        each link's forwarded rows feed the next as its batches finish. Every stage
        writes its own table and stats as ``run`` writes one (resume, settings check,
        shards); a rerun after a crash gives the rows of an uninterrupted run.

        ``budget_seconds`` > 0 stops feeding link 0 once its recorded seconds reach it;
        the links after it still finish what they were given. ``extra_stats`` holds one
        ``Extra`` per link (a dict, a function giving one when the chain ends, or
        None), added to its stats, which the runner alone writes. ``observe``, when
        given, sees every batch the runner accepts (of any link, before it is
        committed), in the order the engine yields them, so inputs that ``PAUSE`` can
        depend on results. Returns one
        result per link.
        """
        if not links:
            raise ValueError("a chain needs at least one link")
        names = [link.stage.name for link in links]
        if len(set(names)) != len(names):
            raise ValueError(f"a chain writes each table once; got {names}")
        extras = list(extra_stats) if extra_stats is not None else [None] * len(links)
        if len(extras) != len(links):
            raise ValueError(f"extra_stats has {len(extras)} entries for {len(links)} links")
        what = f"stage {names[0]}" if len(names) == 1 else f"stages {' -> '.join(names)}"
        with self.writing(what):
            results = _ChainRun(self, links, inputs, budget_seconds, extras, observe).run()
        give_back()  # the chain's buffers and key sets are gone: their memory too
        return results

    def _pending(
        self,
        stage: Stage,
        inputs: Inputs,
        done: KeyIndex,
        counts: Counter[str],
        bar: _Progress,
        batch_size: int,
    ) -> Iterator[_Batch | None]:
        """The batches still to do, chunk by chunk: duplicate keys refused, done keys
        skipped (counted), records built only for what is pending; None for a pause."""
        seen = KeySet()
        for chunk in _chunks(inputs):
            if chunk is PAUSE:
                yield None
                continue
            assert not isinstance(chunk, _Pause)
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
                bar.skip(n_done)
            todo = np.flatnonzero(~is_done)
            step = batch_size * max(1, GROUP_ROWS // batch_size)
            for g in range(0, len(todo), step):
                group = _Group(chunk, todo[g : g + step])
                for i in range(0, len(group.idx), batch_size):
                    yield _Batch(group, keys, fps, i, min(i + batch_size, len(group.idx)))

    @staticmethod
    def _check(stage: Stage, out: list[Record]) -> None:
        """Refuse outputs of the wrong type, naming the stage."""
        for row in out:
            if not isinstance(row, stage.output_type):
                raise TypeError(
                    f"stage {stage.name} returned {type(row).__name__}, "
                    f"expected {stage.output_type.__name__}"
                )
