"""Bootstrapping (stages 8–10 and dedup): grow the mined set without one more diffusion step.

Order: inversion (p → p⁻¹) → backward consistency (the hard validator on every inverse
triplet; a failing inverse drops its forward triplet too) → composition of pairs of
consistent edits of one source (scored by the hard validator, on by default) → dedup.
``assemble`` writes the final ``triplets`` table that the export reads, and counts every
drop by its reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr import slices
from nhr.records import TripletRow
from nhr.runner import Runner, StageResult, TableParts
from nhr.slices import RowsAt
from nhr.stages.composition import CompositionStage, plan_compose_jobs
from nhr.stages.dedup import HASHES_TABLE, dedup, image_hashes
from nhr.stages.inversion import INVERSE_TYPES, InversionStage
from nhr.stages.validator import BackwardStage, ComposedValidatorStage
from nhr.tables import RunTables, constant, flat, positions, take, typed_table


def _skip_kinds(reasons: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(mask of rows with a skip reason, the reason's kind — the text before ':')."""
    reasons = flat(reasons)
    mask = pc.fill_null(pc.greater(pc.utf8_length(reasons), 0), False)
    kinds = pc.list_element(pc.split_pattern(pc.fill_null(reasons, ""), ":", max_splits=1), 0)
    return mask.to_numpy(zero_copy_only=False), kinds


def _count_kinds(drops: Counter[str], prefix: str, kinds: pa.Array) -> None:
    """Add ``prefix + kind`` for each kind in ``kinds`` to ``drops``."""
    for item in pc.value_counts(kinds).to_pylist():
        drops[f"{prefix}{item['values']}"] += int(item["counts"])


def _scores(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A score column as floats, a missing (or NaN) score as 0."""
    out = pc.fill_null(flat(values), 0.0).to_numpy(zero_copy_only=False)
    return np.nan_to_num(out.astype(np.float64), nan=0.0)


def derived(
    base: pa.Table,
    drafts: pa.Table,
    adherence: np.ndarray,
    aesthetic: np.ndarray,
    edit_type: pa.Array,
    judge_id: pa.Array,
    judge_prompt_version: pa.Array,
) -> pa.Table:
    """Bootstrapped triplets, row i made from ``base`` row i (its provenance) and draft
    row i (its images, instruction and writer), scored ``adherence``/``aesthetic``."""
    columns: dict[str, Any] = {name: base.column(name) for name in base.column_names}
    columns.update(
        triplet_id=drafts.column("triplet_id"),
        origin=drafts.column("origin"),
        parents=drafts.column("parents"),
        source_image=drafts.column("source_image"),
        edited_image=drafts.column("edited_image"),
        instruction=drafts.column("instruction"),
        edit_type=edit_type,
        adherence=adherence,
        aesthetic=aesthetic,
        score=np.sqrt(np.maximum(adherence, 0.0) * np.maximum(aesthetic, 0.0)),
        writer_version=drafts.column("writer_version"),
        judge_id=judge_id,
        judge_prompt_version=judge_prompt_version,
    )
    return typed_table(columns, TripletRow.schema())


def inverse_types(edit_types: pa.ChunkedArray | pa.Array) -> pa.Array:
    """What each edit type becomes when inverted."""
    edit_types = flat(edit_types)
    out = edit_types
    for forward, inverse in INVERSE_TYPES.items():
        out = pc.if_else(pc.equal(edit_types, forward), inverse, out)
    return out


# the columns of a writer's drafts and of a verdict table that bootstrapping reads
DRAFT_KEYS = ["triplet_id", "parents", "skip_reason"]
DRAFT_COLUMNS = [
    "triplet_id",
    "origin",
    "parents",
    "source_image",
    "edited_image",
    "instruction",
    "writer_version",
]
VERDICT_COLUMNS = ["subject_id", "passed", "adherence", "aesthetic", "judge_id", "prompt_version"]


@dataclass
class Consistency:
    """Backward consistency of the mined table, worked out from narrow columns: which
    forwards stay (``keep``), and per mined row the position of its kept inverse's draft
    and verdict (-1: it has none), with the drops by reason."""

    keep: np.ndarray
    draft: np.ndarray
    verdict: np.ndarray
    drops: Counter[str]


def consistency(
    mined_ids: pa.Array | pa.ChunkedArray, drafts: pa.Table, verdicts: pa.Table
) -> Consistency:
    """The :class:`Consistency` of mined triplets ``mined_ids`` given the inverse drafts
    (``DRAFT_KEYS`` at least) and the backward verdicts (``subject_id``, ``passed``).

    A forward whose inverse was written and failed the validator is dropped together with
    its inverse (``backward_inconsistent`` counts each side); a forward whose inverse was
    skipped is kept, and the skip is counted as ``inverse_skipped_<kind>``."""
    drops: Counter[str] = Counter()
    n = len(mined_ids)
    dpos = positions(mined_ids, pc.list_element(drafts.column("parents"), 0))
    has = dpos >= 0
    skipped, kinds = _skip_kinds(drafts.column("skip_reason"))
    skip = np.zeros(n, dtype=bool)
    skip[has] = skipped[dpos[has]]
    _count_kinds(drops, "inverse_skipped_", kinds.take(pa.array(dpos[skip], pa.int64())))
    judged = np.flatnonzero(has & ~skip)
    inv_ids = flat(drafts.column("triplet_id")).take(pa.array(dpos[judged], pa.int64()))
    vpos = positions(inv_ids, verdicts.column("subject_id"))
    if len(vpos) and vpos.min() < 0:
        missing = inv_ids[int(np.argmin(vpos))].as_py()
        raise ValueError(f"inverse {missing} has no backward verdict: run backward()")
    passed = pc.fill_null(flat(verdicts.column("passed")), False).to_numpy(zero_copy_only=False)
    passed = passed[vpos].astype(bool)
    if (~passed).any():
        drops["backward_inconsistent_forward"] += int((~passed).sum())
        drops["backward_inconsistent_inverse"] += int((~passed).sum())
    keep = np.ones(n, dtype=bool)
    keep[judged[~passed]] = False
    draft = np.full(n, -1, dtype=np.int64)
    draft[judged[passed]] = dpos[judged[passed]]
    verdict = np.full(n, -1, dtype=np.int64)
    verdict[judged[passed]] = vpos[passed]
    return Consistency(keep, draft, verdict, drops)


def inverse_triplets(base: pa.Table, drafts: pa.Table, verdicts: pa.Table) -> pa.Table:
    """Inverse triplets, row i made from mined row ``base`` i, its inverse draft i and
    that draft's (passed) backward verdict i."""
    return derived(
        base,
        drafts,
        _scores(verdicts.column("adherence")),
        _scores(verdicts.column("aesthetic")),
        inverse_types(base.column("edit_type")),
        verdicts.column("judge_id"),
        verdicts.column("prompt_version"),
    )


def backward_consistency(
    mined: pa.Table, drafts: pa.Table, verdicts: pa.Table
) -> tuple[pa.Table, pa.Table, Counter[str]]:
    """(forwards kept, inverse triplets kept, drops by reason), as ``TripletRow`` tables
    in the order of ``mined``, all at once (see :func:`consistency`)."""
    c = consistency(mined.column("triplet_id"), drafts, verdicts)
    rows = np.flatnonzero(c.draft >= 0)
    inverses = inverse_triplets(
        take(mined, rows), take(drafts, c.draft[rows]), take(verdicts, c.verdict[rows])
    )
    return mined.filter(pa.array(c.keep)), inverses, c.drops


@dataclass
class Composition:
    """Which composed drafts become triplets, worked out from narrow columns: ``rows``
    (draft positions, in draft order), the positions of their two parents among the
    kept forwards (``first``, ``second``) and of their verdicts (None: no validator)."""

    rows: np.ndarray
    first: np.ndarray
    second: np.ndarray
    verdict: np.ndarray | None
    drops: Counter[str]


def composition(
    forward_ids: pa.Array | pa.ChunkedArray, drafts: pa.Table, verdicts: pa.Table | None
) -> Composition:
    """The :class:`Composition` of composed drafts (``DRAFT_KEYS`` at least) given the
    ids of the consistent forwards and the composed verdicts (``subject_id``, ``passed``)
    when the validator ran: both parents must be consistent forwards and the verdict a
    pass."""
    drops: Counter[str] = Counter()
    skipped, kinds = _skip_kinds(drafts.column("skip_reason"))
    _count_kinds(drops, "compose_skipped_", kinds.filter(pa.array(skipped)))
    first = positions(pc.list_element(drafts.column("parents"), 0), forward_ids)
    second = positions(pc.list_element(drafts.column("parents"), 1), forward_ids)
    orphan = ~skipped & ((first < 0) | (second < 0))
    if orphan.any():
        drops["compose_parent_dropped"] += int(orphan.sum())
    ok = ~skipped & ~orphan
    vpos = None
    if verdicts is not None:
        vpos = positions(drafts.column("triplet_id"), verdicts.column("subject_id"))
        passed = np.zeros(drafts.num_rows, dtype=bool)
        found = vpos >= 0
        passed[found] = pc.fill_null(verdicts.column("passed"), False).to_numpy(
            zero_copy_only=False
        )[vpos[found]]
        failed = ok & ~passed
        if failed.any():
            drops["compose_failed_validator"] += int(failed.sum())
        ok &= passed
    rows = np.flatnonzero(ok)
    return Composition(rows, first[rows], second[rows], None if vpos is None else vpos[rows], drops)


def composed_rows(
    a: pa.Table | None, b: pa.Table, drafts: pa.Table, verdicts: pa.Table | None
) -> pa.Table:
    """Composed triplets, row i from draft i, its parents ``a`` i and ``b`` i (their
    forwards) and its verdict i; without verdicts it takes the lower of its parents'
    scores."""
    if verdicts is not None:
        adh, aes = _scores(verdicts.column("adherence")), _scores(verdicts.column("aesthetic"))
        judge, version = verdicts.column("judge_id"), verdicts.column("prompt_version")
    else:
        if a is None:
            raise ValueError("composed triplets without verdicts need their first parents")
        adh = np.minimum(_scores(a.column("adherence")), _scores(b.column("adherence")))
        aes = np.minimum(_scores(a.column("aesthetic")), _scores(b.column("aesthetic")))
        judge, version = b.column("judge_id"), b.column("judge_prompt_version")
    n = drafts.num_rows
    return derived(b, drafts, adh, aes, constant("composed", n), judge, version)


def composed_triplets(
    forwards: pa.Table, drafts: pa.Table, verdicts: pa.Table | None
) -> tuple[pa.Table, Counter[str]]:
    """Composed triplets (in draft order) whose parents are both consistent forwards and,
    when ``verdicts`` is given, that passed the validator; and the drops by reason, all
    at once (see :func:`composition`)."""
    c = composition(forwards.column("triplet_id"), drafts, verdicts)
    out = composed_rows(
        take(forwards, c.first),
        take(forwards, c.second),
        take(drafts, c.rows),
        None if verdicts is None or c.verdict is None else take(verdicts, c.verdict),
    )
    return out, c.drops


class Written:
    """The drafts of a writer table that carry an instruction (no skip reason), as a
    sized stream of tables (a stage's input never held whole)."""

    def __init__(self, tables: RunTables, name: str) -> None:
        self.tables = tables
        self.name = name

    def __len__(self) -> int:
        skipped, _ = _skip_kinds(self.tables.read(self.name, ["skip_reason"]).column("skip_reason"))
        return int((~skipped).sum())

    def __iter__(self) -> Iterator[pa.Table]:
        for batch in self.tables.stream(self.name, batch_rows=slices.SLICE_ROWS):
            skipped, _ = _skip_kinds(batch.column("skip_reason"))
            if not skipped.all():
                yield batch.filter(pa.array(~skipped))


# the tables the assembled ``triplets`` depend on
ASSEMBLE_INPUTS = ["mined", "inversion", "backward", "composition", "composed_validator"]


class Bootstrap:
    """The bootstrapping steps of one run: stages through the runner, whole-table steps
    over the run's tables. ``backends`` gives the run's backends (built on first use)."""

    def __init__(
        self, tables: RunTables, runner: Runner, backends: Callable[[], Any], cfg: Any
    ) -> None:
        self.tables = tables
        self.runner = runner
        self.backends = backends
        self.cfg = cfg

    def invert(self) -> StageResult | None:
        """Stage 8: an inverse instruction for every mined triplet (None when disabled)."""
        if not self.cfg.bootstrap.inversion:
            return None
        stage = InversionStage(self.backends().inverter)
        return self.runner.run(stage, self.tables.stream("mined", batch_rows=slices.SLICE_ROWS))

    def backward(self) -> StageResult | None:
        """Stage 9: the hard validator on every written inverse triplet."""
        if not self.cfg.bootstrap.inversion:
            return None
        drafts = self._written("inversion")
        stage = BackwardStage(
            self.backends().validator, self.tables.store.blobs, self.cfg.validation.threshold
        )
        return self.runner.run(stage, drafts)

    def _written(self, name: str) -> Written:
        """Drafts of a writer table that carry an instruction (no skip reason), read a
        batch at a time."""
        return Written(self.tables, name)

    def consistent(self) -> tuple[pa.Table, pa.Table, Counter[str]]:
        """Forwards and inverses that survive backward consistency, and the drops."""
        mined = self.tables.read("mined")
        if not self.cfg.bootstrap.inversion:
            return mined, TripletRow.schema().empty_table(), Counter()
        return backward_consistency(
            mined, self.tables.read("inversion"), self.tables.read("backward")
        )

    def _consistency(self) -> tuple[pa.Array, Consistency | None]:
        """The ids of the mined triplets and their backward :class:`Consistency` (None
        without inversion), from narrow columns."""
        ids = flat(self.tables.read("mined", ["triplet_id"]).column("triplet_id"))
        if not self.cfg.bootstrap.inversion:
            return ids, None
        return ids, consistency(
            ids,
            self.tables.read("inversion", DRAFT_KEYS),
            self.tables.read("backward", ["subject_id", "passed"]),
        )

    def compose_jobs(self) -> pa.Table:
        """The capped, seeded pairs of consistent edits that composition writes for (read
        from the few columns that pairing needs)."""
        _, c = self._consistency()
        columns = ["source_id", "triplet_id", "edited_image", "prompt", "instruction"]
        if c is None:
            forwards = self.tables.read("mined", columns)
            inverses = pa.table({"parents": [], "instruction": []})
        else:
            forwards = RowsAt(self.tables, "mined", columns).take(np.flatnonzero(c.keep))
            rows = c.draft[c.draft >= 0]
            inverses = take(self.tables.read("inversion", ["parents", "instruction"]), rows)
        return plan_compose_jobs(
            forwards, inverses, self.cfg.bootstrap.compose_max_pairs, self.cfg.run.seed
        )

    def compose(self) -> StageResult | None:
        """Stage 10: composed instructions for capped pairs of consistent edits."""
        if not (self.cfg.bootstrap.inversion and self.cfg.bootstrap.composition):
            return None
        jobs = self.compose_jobs()
        stage = CompositionStage(self.backends().inverter)
        return self.runner.run(stage, jobs)

    def validate_composed(self) -> StageResult | None:
        """The hard validator on composed triplets (when COMPOSE_VALIDATE)."""
        if not (
            self.cfg.bootstrap.inversion
            and self.cfg.bootstrap.composition
            and self.cfg.bootstrap.compose_validate
        ):
            return None
        drafts = self._written("composition")
        stage = ComposedValidatorStage(
            self.backends().validator, self.tables.store.blobs, self.cfg.validation.threshold
        )
        return self.runner.run(stage, drafts)

    def composed(self, forwards: pa.Table) -> tuple[pa.Table, Counter[str]]:
        """Composed triplets that pass (both parents consistent), and the drops."""
        if not (self.cfg.bootstrap.inversion and self.cfg.bootstrap.composition):
            return TripletRow.schema().empty_table(), Counter()
        verdicts = (
            self.tables.read("composed_validator") if self.cfg.bootstrap.compose_validate else None
        )
        return composed_triplets(forwards, self.tables.read("composition"), verdicts)

    def settings(self) -> dict[str, Any]:
        """What the assembled table depends on besides its input tables."""
        return {
            "inversion": self.cfg.bootstrap.inversion,
            "composition": self.cfg.bootstrap.composition,
            "compose_validate": self.cfg.bootstrap.compose_validate,
            "dedup": self.cfg.bootstrap.dedup,
            "dedup_max_distance": self.cfg.bootstrap.dedup_max_distance,
        }

    def assemble(self) -> StageResult:
        """Consistent forwards + inverses + composed → dedup → the ``triplets`` table.

        A whole-table step: recorded with the fingerprint of its inputs and settings, so
        a rerun over unchanged tables returns the recorded result at once."""
        return self.runner.whole_table("triplets", ASSEMBLE_INPUTS, self.settings(), self._assemble)

    def _assemble(self) -> tuple[pa.Table | TableParts, dict[str, Any]]:
        """The ``triplets`` table and its figures. Without dedup the table comes a slice
        at a time; dedup compares every image, so it assembles the whole table."""
        ids, c = self._consistency()
        forward_rows = np.flatnonzero(c.keep) if c is not None else np.arange(len(ids))
        comp = None
        if self.cfg.bootstrap.inversion and self.cfg.bootstrap.composition:
            verdicts = (
                self.tables.read("composed_validator", ["subject_id", "passed"])
                if self.cfg.bootstrap.compose_validate
                else None
            )
            comp = composition(
                ids.take(pa.array(forward_rows, pa.int64())),
                self.tables.read("composition", DRAFT_KEYS),
                verdicts,
            )
        drops: Counter[str] = Counter()
        drops.update(c.drops if c is not None else {})
        drops.update(comp.drops if comp is not None else {})
        counts = {
            "mined": len(forward_rows),
            "inverted": int((c.draft >= 0).sum()) if c is not None else 0,
            "composed": len(comp.rows) if comp is not None else 0,
        }
        parts = self._parts(c, forward_rows, comp)
        hashing: dict[str, Any] = {}
        if not self.cfg.bootstrap.dedup:
            n = sum(counts.values())  # every consistent row is written
            return TableParts(parts, TripletRow.schema()), {
                "rows_in": n,
                "rows_out": n,
                "by_origin_before_dedup": counts,
                # each part is of one origin: forwards, inverses, composed, in that order
                "by_origin": {origin: k for origin, k in counts.items() if k},
                "drops_by_reason": dict(sorted(drops.items())),
                "image_hashes": hashing,
            }
        rows = pa.concat_tables([TripletRow.schema().empty_table(), *parts])
        store = self.tables.store
        hashes, hashing = image_hashes(
            pc.unique(
                pa.chunked_array(
                    [flat(rows.column("source_image")), flat(rows.column("edited_image"))]
                )
            ),
            self.tables.read(HASHES_TABLE) if self.tables.exists(HASHES_TABLE) else None,
            store.blobs.get,
        )
        if hashing["computed"]:
            store.tables.write_table(HASHES_TABLE, hashes, {"settings_hash": "whole-table"})
        kept, dedup_drops, _ = dedup(
            rows, hashes, store.blobs.get, self.cfg.bootstrap.dedup_max_distance
        )
        drops.update(dedup_drops)
        figures = {
            "rows_in": rows.num_rows,
            "rows_out": kept.num_rows,
            "by_origin_before_dedup": counts,
            "by_origin": {
                item["values"]: item["counts"]
                for item in pc.value_counts(kept.column("origin")).to_pylist()
            },
            "drops_by_reason": dict(sorted(drops.items())),
            "image_hashes": hashing,
        }
        return kept, figures

    def _parts(
        self, c: Consistency | None, forward_rows: np.ndarray, comp: Composition | None
    ) -> Iterator[pa.Table]:
        """The ``triplets`` table (before dedup) a slice at a time: the consistent
        forwards, then their inverses (both in the order of ``mined``), then the composed
        triplets (in draft order)."""
        schema = TripletRow.schema()

        def mined() -> Iterator[tuple[int, pa.Table]]:
            lo = 0
            for batch in self.tables.stream("mined", batch_rows=slices.SLICE_ROWS):
                yield lo, batch
                lo += batch.num_rows

        for lo, batch in mined():
            yield batch if c is None else batch.filter(pa.array(c.keep[lo : lo + batch.num_rows]))
        if c is not None:
            drafts = RowsAt(self.tables, "inversion", DRAFT_COLUMNS)
            verdicts = self.tables.read("backward", VERDICT_COLUMNS)
            for lo, batch in mined():
                sel = np.flatnonzero(c.draft[lo : lo + batch.num_rows] >= 0)
                if len(sel):
                    yield inverse_triplets(
                        take(batch, sel),
                        drafts.take(c.draft[lo + sel]),
                        take(verdicts, c.verdict[lo + sel]),
                    )
        if comp is not None and len(comp.rows):
            # the parents' rows, a slice at a time, each from one pass over ``mined``
            seconds = slices.rows_in_slices(
                self.tables, "mined", schema.names, forward_rows[comp.second]
            )
            firsts = (
                slices.rows_in_slices(self.tables, "mined", schema.names, forward_rows[comp.first])
                if comp.verdict is None
                else None
            )
            drafts = RowsAt(self.tables, "composition", DRAFT_COLUMNS)
            judged = (
                self.tables.read("composed_validator", VERDICT_COLUMNS)
                if comp.verdict is not None
                else None
            )
            for lo, b in zip(range(0, len(comp.rows), slices.SLICE_ROWS), seconds, strict=True):
                part = slice(lo, lo + b.num_rows)
                a = next(firsts) if firsts is not None else None
                v = None
                if judged is not None and comp.verdict is not None:
                    v = take(judged, comp.verdict[part])
                yield composed_rows(a, b, drafts.take(comp.rows[part]), v).cast(schema)


def chains(triplets: pa.Table) -> pa.Table:
    """Multi-turn chains I0 → Ie1 → Ie2 from kept composed triplets whose first edit is
    kept too: turn 1 is the mined edit, turn 2 the composed one. Columns: ``chain_id``,
    ``images``, ``instructions``, ``triplet_ids`` (lists) and ``width``, ``height``."""
    composed = triplets.filter(pc.equal(triplets.column("origin"), "composed"))
    first = positions(pc.list_element(composed.column("parents"), 0), triplets.column("triplet_id"))
    return chain_rows(composed.filter(pa.array(first >= 0)), take(triplets, first[first >= 0]))


# the triplet columns a chain takes from its composed triplet and from its first edit
CHAIN_COLUMNS = ("triplet_id", "source_image", "edited_image", "instruction", "width", "height")


def chain_rows(composed: pa.Table, first: pa.Table) -> pa.Table:
    """The chains (as ``chains`` gives them) of composed triplets and, row for row, their
    first edits."""
    n = composed.num_rows

    def lists(*cols: pa.ChunkedArray) -> pa.Array:
        width = len(cols)
        values = (
            pa.chunked_array([flat(c) for c in cols])
            .combine_chunks()
            .take(
                pa.array(
                    (np.arange(n)[:, None] + n * np.arange(width)[None, :]).ravel(), pa.int64()
                )
            )
        )
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * width, pa.int32()), values)

    a = first
    return pa.table(
        {
            "chain_id": pc.binary_join_element_wise("chain-", composed.column("triplet_id"), ""),
            "images": lists(
                a.column("source_image"), a.column("edited_image"), composed.column("edited_image")
            ),
            "instructions": lists(a.column("instruction"), composed.column("instruction")),
            "triplet_ids": lists(a.column("triplet_id"), composed.column("triplet_id")),
            "width": composed.column("width"),
            "height": composed.column("height"),
        }
    )


def iter_chains(tables: RunTables, name: str) -> Iterator[pa.Table]:
    """``chains`` of the triplets table ``name``, the same rows in the same order, a
    slice (``slices.SLICE_ROWS`` chains) at a time: which rows are composed, and where
    their first edits are, comes from narrow columns (origins, parents, ids), and the
    wide rows of both are read a slice at a time (``slices.rows_in_slices``), so what is
    held is a slice of chains, not every composed triplet and its first edit."""
    at, firsts, lo = [np.zeros(0, np.int64)], [pa.array([], pa.string())], 0
    for batch in tables.stream(name, ["origin", "parents"]):
        mine = np.flatnonzero(
            pc.fill_null(pc.equal(batch.column("origin"), "composed"), False).to_numpy(
                zero_copy_only=False
            )
        )
        at.append(lo + mine)
        parents = take(batch.select(["parents"]), mine).column("parents")
        firsts.append(flat(pc.list_element(parents, 0)).cast(pa.string()))
        lo += batch.num_rows
    composed, first_ids = np.concatenate(at), pa.concat_arrays(firsts)
    if not len(composed):
        return
    found, where = slices.rows_where(tables, name, "triplet_id", first_ids, ["triplet_id"])
    pos = positions(first_ids, found.column("triplet_id"))
    keep = pos >= 0
    pairs = zip(
        slices.rows_in_slices(tables, name, CHAIN_COLUMNS, composed[keep]),
        slices.rows_in_slices(tables, name, CHAIN_COLUMNS, where[pos[keep]]),
        strict=True,
    )
    for last, first in pairs:
        yield chain_rows(last, first)


__all__ = [
    "Bootstrap",
    "backward_consistency",
    "chain_rows",
    "chains",
    "composed_triplets",
    "iter_chains",
]
