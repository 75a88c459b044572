"""Stage 4: edits, the paper's budget-aware scheduler over the N×k×M job grid, and the
call batcher that groups jobs of one size, step count and guidance into full editor
calls."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.backends.base import Editor, contract
from nhr.hashing import FINGERPRINT_ROWS, KeyIndex, splitmix64
from nhr.records import CandidateRow, EditJob
from nhr.resolutions import Size, nearest
from nhr.slices import SpilledRows
from nhr.stages.base import Stage
from nhr.store import BlobStore
from nhr.tables import flat

# jobs per pass over the sources, and per band of the emission order: a pass holds a
# few arrays of this many jobs, and a band's jobs are held while they are emitted
PASS_JOBS = 1 << 18
BAND_JOBS = 1 << 18
_BINS = 1 << 16  # histogram bins over the top 16 bits of a priority
_SHIFT = np.uint64(48)
_STREAM = np.uint64(0x9E3779B97F4A7C15)
_SALT_SEED = np.uint64(0xD1B54A32D192ED03)
_SALT_STEPS = np.uint64(0x8CB92BA72F3D8DD7)
_SALT_GUIDANCE = np.uint64(0xA0761D6478BD642F)
# a job of a band as the plan spills it: source index, job index in its source, priority
_BAND_SCHEMA = pa.schema(
    [pa.field("src", pa.int64()), pa.field("local", pa.int64()), pa.field("prio", pa.uint64())]
)
# jobs the call batcher holds at most by default (EDIT_SCHEDULE_WINDOW)
SCHEDULE_WINDOW = 512


def edit_step_levels(lo: int, hi: int, levels: int = 0) -> np.ndarray:
    """The step counts jobs draw from: every integer in [lo, hi] (``levels`` 0, or at
    least the range's size), else ``levels`` values evenly spaced over it, rounded
    (one level: the middle). Few levels let the batcher fill calls of one step count."""
    if levels <= 0 or levels >= hi - lo + 1:
        return np.arange(lo, hi + 1, dtype=np.int64)
    if levels == 1:
        return np.array([(lo + hi + 1) // 2], dtype=np.int64)
    return np.unique(np.floor(np.linspace(lo, hi, levels) + 0.5).astype(np.int64))


def _source_seeds(source_ids: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A stable 64-bit seed per source (blake2b of the run seed and the source id); the
    ids made Python strings a slice at a time."""
    out = np.empty(len(source_ids), dtype=np.uint64)
    for lo in range(0, len(source_ids), FINGERPRINT_ROWS):
        ids = source_ids.slice(lo, FINGERPRINT_ROWS).to_pylist()
        out[lo : lo + len(ids)] = [
            int.from_bytes(
                hashlib.blake2b(f"{seed}:{sid}".encode(), digest_size=8).digest(), "little"
            )
            for sid in ids
        ]
    return out


@dataclass
class EditPlan:
    """The N×k×M edit grid over the gated sources, emitted lazily in a seeded uniform
    order, as ``pa.Table`` chunks of ``EditJob`` rows.

    Every job (source s, instruction j, seed m) gets a priority: the (j·M + m)-th value
    of a splitmix64 stream seeded by s, i.e. independent uniform 64-bit numbers. Jobs
    come out in increasing priority, so the first n jobs are the n smallest priorities:
    a uniform sample of the grid, wherever a cap or a budget stops. The plan is held for
    the whole search, so its sources are compact (``compact_sources``) and their image
    paths, the widest column, are spilled to disk and read per chunk. ``max_jobs`` keeps
    the smallest ``max_jobs``. The grid itself is never built: a pass hashes the jobs of
    a slice of sources at a time (``pass_jobs``); one pass counts a histogram of the
    priorities' top bits, which splits the emitted jobs into bands of about
    ``band_jobs`` (and finds the cap's cut-off); one more pass writes every emitted job
    to its band's file on local disk, and each band is read back, sorted and emitted in
    chunks of ``chunk_rows``. What is held is a pass's slice and a band, whatever the
    size of the grid.
    """

    sources: pa.Table  # gated sources, sorted by source_id (``compact_sources``)
    images: SpilledRows  # their image paths, in the same order, on local disk
    texts: pa.Array  # every prompt's instructions, flattened
    kinds: pa.Array  # their edit types
    first: np.ndarray  # per source: index of its prompt's first instruction in ``texts``
    k: np.ndarray  # per source: its prompt's number of instructions
    m_seeds: int
    steps_range: tuple[int, int]
    guidances: tuple[float, ...]
    seed: int
    max_jobs: int = 0
    chunk_rows: int = 50_000
    pass_jobs: int = PASS_JOBS
    band_jobs: int = BAND_JOBS
    steps_levels: int = 0  # see edit_step_levels
    # a part of the grid (an adaptive search's round): only seeds m in [lo, hi), only the
    # groups (source, instruction) marked open, in group order (see ``group_index``)
    seed_range: tuple[int, int] | None = None
    open_groups: np.ndarray | None = None
    # per group, a guidance that replaces the drawn one (NaN: keep the drawn one)
    guidance_by_group: np.ndarray | None = None

    # what every part of the plan derives from its sources alike, made once and shared
    # by the parts (``part`` copies the plan): per source seeds, offsets, the id index
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.derived:
            ids = self.sources.column("source_id")
            jobs = self.k.astype(np.int64) * self.m_seeds
            self.derived.update(
                seeds=_source_seeds(ids, self.seed),
                jobs=jobs,
                offsets=np.concatenate([[0], np.cumsum(jobs)]),
                group_first=np.concatenate([[0], np.cumsum(self.k.astype(np.int64))]),
                # hashed once: ``group_index`` runs for every chunk of jobs
                source_index=KeyIndex(ids),
            )
        d = self.derived
        self._seeds, self._jobs, self._offsets = d["seeds"], d["jobs"], d["offsets"]
        self._group_first, self._source_index = d["group_first"], d["source_index"]
        lo, hi = self.seed_range or (0, self.m_seeds)
        self._lo, self._hi = max(0, lo), min(hi, self.m_seeds)
        groups = self.groups if self.open_groups is None else int(self.open_groups.sum())
        self._selected = groups * max(0, self._hi - self._lo)

    @property
    def grid_size(self) -> int:
        """Jobs in the whole grid."""
        return int(self._offsets[-1])

    @property
    def groups(self) -> int:
        """(source, instruction) groups of the grid."""
        return int(self._group_first[-1])

    @property
    def selected(self) -> int:
        """Jobs of the part of the grid the plan covers (the whole grid unless
        ``seed_range`` or ``open_groups`` narrow it), before ``max_jobs``."""
        return self._selected

    def __len__(self) -> int:
        """Jobs the plan emits (its part of the grid, or ``max_jobs`` of it)."""
        return min(self.max_jobs, self.selected) if self.max_jobs else self.selected

    def part(
        self,
        seed_range: tuple[int, int],
        open_groups: np.ndarray | None = None,
        max_jobs: int = 0,
        guidance_by_group: np.ndarray | None = None,
    ) -> EditPlan:
        """The plan of seeds ``seed_range`` of the ``open_groups`` (a bool per group), the
        ``max_jobs`` of smallest priority: every job in it is the grid's job (same id,
        priority, seed and steps), with its guidance replaced where ``guidance_by_group``
        gives one (not NaN)."""
        return replace(
            self,
            seed_range=seed_range,
            open_groups=open_groups,
            max_jobs=max_jobs,
            guidance_by_group=guidance_by_group,
        )

    def group_index(self, source_ids: pa.Array | pa.ChunkedArray, j: np.ndarray) -> np.ndarray:
        """The group index of (source, instruction j) pairs (-1 for a source not in the
        plan), the order ``open_groups`` and ``guidance_by_group`` use."""
        pos = self._source_index.positions(source_ids)
        out = self._group_first[np.maximum(pos, 0)] + np.asarray(j, dtype=np.int64)
        return np.where(pos >= 0, out, -1)

    def group_jobs(
        self, groups: np.ndarray, seed_range: tuple[int, int], guidance: float | None = None
    ) -> pa.Table:
        """The jobs of seeds ``seed_range`` of the given groups, in priority order, built
        directly (no pass over the grid): each is the grid's job (same id, priority, seed
        and steps), at ``guidance`` where one is given."""
        groups = np.asarray(groups, dtype=np.int64)
        lo, hi = max(0, seed_range[0]), min(seed_range[1], self.m_seeds)
        if not len(groups) or hi <= lo:
            return EditJob.schema().empty_table()
        src = np.searchsorted(self._group_first, groups, side="right") - 1
        j = groups - self._group_first[src]
        ms = np.arange(lo, hi, dtype=np.int64)
        src = np.repeat(src, len(ms))
        local = np.repeat(j, len(ms)) * self.m_seeds + np.tile(ms, len(groups))
        with np.errstate(over="ignore"):
            prio = splitmix64(self._seeds[src] + local.astype(np.uint64) * _STREAM)
        order = np.lexsort((local, src, prio))
        table = self._table(src[order], local[order], prio[order])
        if guidance is None:
            return table
        column = pa.array(np.full(table.num_rows, guidance), table.schema.field("guidance").type)
        return table.set_column(table.schema.get_field_index("guidance"), "guidance", column)

    def _passes(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(source index, job index within its source, priority) of every job, a slice
        of sources at a time (about ``pass_jobs`` jobs each)."""
        n = len(self._jobs)
        start = 0
        while start < n:
            stop = int(np.searchsorted(self._offsets, self._offsets[start] + self.pass_jobs))
            stop = min(max(stop, start + 1), n)
            counts = self._jobs[start:stop]
            src = np.repeat(np.arange(start, stop, dtype=np.int64), counts)
            local = np.arange(len(src), dtype=np.int64) - np.repeat(
                self._offsets[start:stop] - self._offsets[start], counts
            )
            with np.errstate(over="ignore"):
                state = self._seeds[src] + local.astype(np.uint64) * _STREAM
            prio = splitmix64(state)
            if self.seed_range is not None or self.open_groups is not None:
                m = local % self.m_seeds
                keep = (m >= self._lo) & (m < self._hi)
                if self.open_groups is not None:
                    keep &= self.open_groups[self._group_first[src] + local // self.m_seeds]
                src, local, prio = src[keep], local[keep], prio[keep]
            yield src, local, prio
            start = stop

    def _bands(self) -> tuple[list[tuple[int, int]], int, np.uint64]:
        """Bands as [first bin, last bin) of the top-16-bit histogram, the cap's bin and
        its cut-off priority (jobs in that bin above it are not emitted): a pass over the
        grid, and a second one over the cap's bin when there is a cap."""
        hist = np.zeros(_BINS, dtype=np.int64)
        for _, _, prio in self._passes():
            hist += np.bincount((prio >> _SHIFT).astype(np.int64), minlength=_BINS)
        want = len(self)
        cum = np.cumsum(hist)
        last = int(np.searchsorted(cum, want)) if want else 0  # bin holding the want-th job
        cut = np.uint64(np.iinfo(np.uint64).max)
        if want and want < self.selected:
            before = int(cum[last - 1]) if last else 0
            inside = np.concatenate(
                [p[(p >> _SHIFT) == np.uint64(last)] for _, _, p in self._passes()]
            )
            cut = np.sort(inside)[want - before - 1]
        bands: list[tuple[int, int]] = []
        lo, acc = 0, 0
        for b in range(last + 1 if want else 0):
            acc += int(hist[b])
            if acc >= self.band_jobs or b == last:
                bands.append((lo, b + 1))
                lo, acc = b + 1, 0
        return bands, last, cut

    def __iter__(self) -> Iterator[pa.Table]:
        """The plan's jobs in priority order, as tables of at most ``chunk_rows`` rows."""
        if not len(self):
            return
        left = len(self)
        with tempfile.TemporaryDirectory(prefix="nhr-plan-") as tmp:
            for path in self._spill_bands(Path(tmp)):
                with pa.OSFile(str(path)) as source:
                    band = pa.ipc.open_file(source).read_all()
                path.unlink()
                src, local, prio = (flat(band.column(n)).to_numpy() for n in _BAND_SCHEMA.names)
                del band
                order = np.lexsort((local, src, prio))[:left]
                left -= len(order)
                for i in range(0, len(order), self.chunk_rows):
                    take = order[i : i + self.chunk_rows]
                    jobs = self._table(src[take], local[take], prio[take])
                    yield self._guided(jobs, src[take], local[take])
                if not left:
                    return

    def _spill_bands(self, folder: Path) -> list[Path]:
        """One more pass over the grid after ``_bands``: every emitted job (source index,
        job index, priority) written to its band's file in ``folder`` (Arrow IPC), so a
        band is read back whole, not found by a pass of its own. Returns the bands'
        files in emission order."""
        bands, last, cut = self._bands()
        his = np.array([hi for _, hi in bands], dtype=np.uint64)
        paths = [folder / f"band-{k}.arrow" for k in range(len(bands))]
        writers = [pa.ipc.new_file(str(path), _BAND_SCHEMA) for path in paths]
        try:
            for src, local, prio in self._passes():
                top = prio >> _SHIFT
                keep = (top < np.uint64(last)) | ((top == np.uint64(last)) & (prio <= cut))
                src, local, prio, top = src[keep], local[keep], prio[keep], top[keep]
                band = np.searchsorted(his, top, side="right")
                order = np.argsort(band, kind="stable")
                starts = np.searchsorted(band[order], np.arange(len(bands) + 1))
                for k in np.flatnonzero(np.diff(starts)):
                    at = order[starts[k] : starts[k + 1]]
                    columns = [pa.array(src[at]), pa.array(local[at]), pa.array(prio[at])]
                    writers[k].write_batch(pa.record_batch(columns, schema=_BAND_SCHEMA))
        finally:
            for writer in writers:
                writer.close()
        return paths

    def _guided(self, table: pa.Table, src: np.ndarray, local: np.ndarray) -> pa.Table:
        """``table`` with the guidance of each job whose group has one in
        ``guidance_by_group``."""
        if self.guidance_by_group is None:
            return table
        given = self.guidance_by_group[self._group_first[src] + local // self.m_seeds]
        drawn = table.column("guidance").to_numpy()
        kind = table.schema.field("guidance").type
        column = pa.array(np.where(np.isnan(given), drawn, given), kind)
        return table.set_column(table.schema.get_field_index("guidance"), "guidance", column)

    def _table(self, src: np.ndarray, local: np.ndarray, prio: np.ndarray) -> pa.Table:
        """``EditJob`` rows of the given jobs, built column-wise."""
        m = self.m_seeds
        j = local // m
        rows = pa.array(src)
        s = self.sources
        sid = s.column("source_id").take(rows)
        pid = s.column("prompt_id").take(rows).cast(pa.string())
        suffix = pa.array([f"-i{x // m}-e{x % m}" for x in range(int(local.max()) + 1)])
        inst = pa.array([f"-i{x}" for x in range(int(j.max()) + 1)])
        at_text = pa.array(self.first[src] + j)
        with np.errstate(over="ignore"):
            h_seed = splitmix64(prio ^ _SALT_SEED)
            h_steps = splitmix64(prio ^ _SALT_STEPS)
            h_guid = splitmix64(prio ^ _SALT_GUIDANCE)
        levels = edit_step_levels(*self.steps_range, self.steps_levels)
        steps = levels[(h_steps % np.uint64(len(levels))).astype(np.int64)]
        guidance = np.asarray(self.guidances, dtype=np.float64)[
            (h_guid % np.uint64(len(self.guidances))).astype(np.int64)
        ]
        columns = {
            "candidate_id": pc.binary_join_element_wise(sid, suffix.take(pa.array(local)), ""),
            "source_id": sid,
            "prompt_id": pid,
            "instruction_id": pc.binary_join_element_wise(pid, inst.take(pa.array(j)), ""),
            "instruction": self.texts.take(at_text),
            "edit_type": self.kinds.take(at_text),
            "style": s.column("style").take(rows).cast(pa.string()),
            "source_image": self.images.take(src).column("image"),
            "width": s.column("width").take(rows),
            "height": s.column("height").take(rows),
            "seed": (h_seed & np.uint64(0x7FFFFFFF)).astype(np.int64),
            "steps": steps,
            "guidance": guidance,
        }
        schema = EditJob.schema()
        return pa.table({f.name: columns[f.name] for f in schema}).cast(schema)


# the columns of the sources table an edit job takes
JOB_SOURCE_COLUMNS = ("source_id", "prompt_id", "style", "image", "width", "height")


def compact_sources(sources: pa.Table) -> pa.Table:
    """The ``JOB_SOURCE_COLUMNS`` but the image, as an edit plan holds them for a whole
    search: one chunk each, prompt ids and styles dictionary-encoded (a prompt has
    several sources, and styles are few) and sizes as int32. At Table 2's half a million
    gated sources this is 16 MB against 26 MB for the columns as read."""

    return pa.table(
        {
            "source_id": flat(sources.column("source_id")),
            "prompt_id": flat(sources.column("prompt_id")).dictionary_encode(),
            "style": flat(sources.column("style")).dictionary_encode(),
            "width": flat(sources.column("width")).cast(pa.int32()),
            "height": flat(sources.column("height")).cast(pa.int32()),
        }
    )


def plan_edit_jobs(
    sources: pa.Table,
    prompts: pa.Table,
    m_seeds: int,
    steps_range: tuple[int, int],
    guidances: tuple[float, ...],
    seed: int,
    max_jobs: int = 0,
    chunk_rows: int = 50_000,
    steps_levels: int = 0,
) -> EditPlan:
    """The lazy plan of (source, instruction, seed) jobs over ``sources`` (the gated
    sources: at least the ``JOB_SOURCE_COLUMNS`` of ``SourceRow``) and their ``prompts``
    (columns of ``PromptRow``).

    Drawing jobs from the front of the plan is drawing uniformly from the grid, as the
    paper's scheduler does, so a budget cap anywhere still gives an unbiased sample.
    ``max_jobs`` > 0 keeps only that many. Steps, guidance and seed are drawn per job
    (steps from ``edit_step_levels(*steps_range, steps_levels)``).
    """
    sources = sources.take(pc.sort_indices(sources, [("source_id", "ascending")]))
    where = pc.index_in(sources.column("prompt_id"), value_set=prompts.column("prompt_id"))
    if where.null_count:
        missing = sources.column("prompt_id").filter(pc.is_null(where))[0].as_py()
        raise ValueError(f"source of prompt {missing!r}: that prompt is not in the prompts table")
    texts = prompts.column("instructions").combine_chunks()
    kinds = prompts.column("edit_types").combine_chunks()
    offsets = texts.offsets.to_numpy().astype(np.int64)
    lengths = np.diff(offsets)
    if not np.array_equal(lengths, np.diff(kinds.offsets.to_numpy())):
        raise ValueError("every prompt needs one edit type per instruction")
    idx = where.to_numpy(zero_copy_only=False).astype(np.int64)
    return EditPlan(
        sources=compact_sources(sources),
        images=SpilledRows(sources.select(["image"])),
        texts=texts.flatten(),
        kinds=kinds.flatten(),
        first=offsets[idx] - offsets[0],
        k=lengths[idx],
        m_seeds=m_seeds,
        steps_range=steps_range,
        guidances=tuple(guidances),
        seed=seed,
        max_jobs=max_jobs,
        chunk_rows=chunk_rows,
        steps_levels=steps_levels,
    )


CallKey = tuple[Size, int, float]


def call_key(job: EditJob, buckets: tuple[Size, ...] = ()) -> CallKey:
    """What jobs of one editor call share: (size, steps, guidance); the size is the
    job's own, or with ``buckets`` the nearest bucket (the size the editor works at)."""
    size = (int(job.width), int(job.height))
    return (nearest(size, buckets) if buckets else size, int(job.steps), float(job.guidance))


def edit_call_batches(
    jobs: Iterable[EditJob],
    max_batch: int,
    window: int = SCHEDULE_WINDOW,
    buckets: tuple[Size, ...] = (),
) -> Iterator[list[EditJob]]:
    """Editor calls over ``jobs`` (in arrival order): each call holds jobs of one
    ``call_key``, at most ``max_batch``; every job comes out exactly once.

    A scheduling window holds at most ``window`` jobs, grouped by key: a group is
    emitted as soon as it holds ``max_batch`` jobs; when the window is full, the fullest
    group (the oldest of a tie) goes as a partial call; the rest go at the end, oldest
    group first. A window of at least keys × (max_batch − 1) + 1 jobs makes every call
    but the last few full. Jobs wait in the window at most until it turns over, so a
    budget that stops the stream still sees a near-uniform sample of the plan.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    window = max(1, int(window))
    groups: dict[CallKey, list[EditJob]] = {}
    bucket_of: dict[Size, Size] = {}
    held = 0
    for job in jobs:
        size = (int(job.width), int(job.height))
        if buckets:
            if size not in bucket_of:
                bucket_of[size] = nearest(size, buckets)
            size = bucket_of[size]
        key = (size, int(job.steps), float(job.guidance))
        group = groups.setdefault(key, [])
        group.append(job)
        held += 1
        if len(group) >= max_batch:
            del groups[key]
        elif held >= window:
            key = max(groups, key=lambda k: len(groups[k]))
            group = groups.pop(key)
        else:
            continue
        held -= len(group)
        yield group
    yield from groups.values()


@dataclass(frozen=True)
class EditCallBatcher:
    """``edit_call_batches`` with its window and buckets bound: a picklable ``Batcher``
    for the editor's link (``Link(..., batcher=EditCallBatcher(...))``)."""

    window: int = SCHEDULE_WINDOW
    buckets: tuple[Size, ...] = ()

    def __call__(self, jobs: Iterable[EditJob], max_batch: int) -> Iterator[list[EditJob]]:
        return edit_call_batches(jobs, max_batch, self.window, self.buckets)


def call_batcher(editor: Editor, window: int = SCHEDULE_WINDOW) -> EditCallBatcher:
    """The batcher for ``editor``: keys sizes by the buckets it works at, if any."""
    return EditCallBatcher(window, tuple(contract(editor).work_buckets or ()))


class EditStage(Stage[EditJob, CandidateRow]):
    """Runs the editor on each job; the edited image must come back at the source's size.

    A batch's jobs are grouped by ``call_key`` (size or work bucket, steps, guidance) and
    each group is one editor call, so a batch from ``edit_call_batches`` is one call.
    ``usage()`` adds ``editor_calls`` and ``editor_images`` to the editor's own counters
    (their ratio: images per call). ``max_batch`` is the editor's most images per call
    (None: any number, e.g. the synthetic editor).
    """

    name = "candidates"
    input_type = EditJob
    output_type = CandidateRow
    backend_fields = ("editor",)

    def __init__(self, editor: Editor, blobs: BlobStore) -> None:
        self.editor = editor
        self.blobs = blobs
        self.buckets: tuple[Size, ...] = tuple(contract(editor).work_buckets or ())
        self.counts = {"editor_calls": 0.0, "editor_images": 0.0}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(vars(self))
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._lock = threading.Lock()

    @property
    def max_batch(self) -> int | None:
        """Most images per editor call (None: no limit of its own)."""
        return contract(self.editor).max_batch

    def own_settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"editor": self.editor.model_id}
        if self.buckets:
            out["work_buckets"] = [list(b) for b in self.buckets]
        return out

    def setup(self) -> None:
        """Load the editor before the first batch, so load time is not billed to a job."""
        contract(self.editor).load()

    def usage(self) -> dict[str, float]:
        """The editor's counters plus this stage's ``editor_calls`` and ``editor_images``."""
        total = super().usage()
        with self._lock:
            for key, n in self.counts.items():
                total[key] = total.get(key, 0.0) + n
        return total

    def process_batch(self, rows: list[EditJob]) -> list[CandidateRow]:
        """Edit the batch, one editor call per (size, steps, guidance); record seconds
        per job (its call's seconds shared by the call's jobs)."""
        sources = [self.blobs.view(r.source_image) for r in rows]
        images: list[Any] = [None] * len(rows)
        seconds = [0.0] * len(rows)
        groups: dict[CallKey, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(call_key(r, self.buckets), []).append(i)
        for (_, steps, guidance), idx in groups.items():
            t0 = time.perf_counter()
            edited = self.editor.edit(
                [sources[i] for i in idx],
                [rows[i].instruction for i in idx],
                [rows[i].seed for i in idx],
                [steps] * len(idx),
                guidance,
            )
            per_job = (time.perf_counter() - t0) / len(idx)
            with self._lock:
                self.counts["editor_calls"] += 1
                self.counts["editor_images"] += len(idx)
            for i, image in zip(idx, edited, strict=True):
                images[i] = image
                seconds[i] = per_job
        out = []
        for job, src, image, secs in zip(rows, sources, images, seconds, strict=True):
            if image.size != src.size:
                raise ValueError(
                    f"{self.editor.model_id} returned {image.size} for a {src.size} source"
                )
            out.append(
                CandidateRow(
                    **job.to_row(),
                    image=self.blobs.put(image),
                    model_id=self.editor.model_id,
                    seconds=secs,
                )
            )
        return out
