"""Bootstrapping (stages 8–10 and dedup): grow the mined set without one more diffusion step.

Order: inversion (p → p⁻¹) → backward consistency (the hard validator on every inverse
triplet; a failing inverse drops its forward triplet too) → composition of pairs of
consistent edits of one source (scored by the hard validator, on by default) → dedup.
``assemble`` writes the final ``triplets`` table that the export reads, and counts every
drop by its reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.records import TripletRow
from nhr.runner import Runner, StageResult
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


def backward_consistency(
    mined: pa.Table, drafts: pa.Table, verdicts: pa.Table
) -> tuple[pa.Table, pa.Table, Counter[str]]:
    """(forwards kept, inverse triplets kept, drops by reason), as ``TripletRow`` tables
    in the order of ``mined``.

    A forward whose inverse was written and failed the validator is dropped together with
    its inverse (``backward_inconsistent`` counts each side); a forward whose inverse was
    skipped is kept, and the skip is counted as ``inverse_skipped_<kind>``.
    """
    drops: Counter[str] = Counter()
    first_parent = pc.list_element(drafts.column("parents"), 0)
    dpos = positions(mined.column("triplet_id"), first_parent)
    has = dpos >= 0
    skipped, kinds = _skip_kinds(drafts.column("skip_reason"))
    skip = np.zeros(mined.num_rows, dtype=bool)
    skip[has] = skipped[dpos[has]]
    _count_kinds(drops, "inverse_skipped_", kinds.take(pa.array(dpos[skip], pa.int64())))
    judged = has & ~skip
    inv = take(drafts, dpos[judged])
    vpos = positions(inv.column("triplet_id"), verdicts.column("subject_id"))
    if len(vpos) and vpos.min() < 0:
        missing = inv.column("triplet_id")[int(np.argmin(vpos))].as_py()
        raise ValueError(f"inverse {missing} has no backward verdict: run backward()")
    verdict = take(verdicts, vpos)
    passed = pc.fill_null(verdict.column("passed"), False).to_numpy(zero_copy_only=False)
    if (~passed).any():
        drops["backward_inconsistent_forward"] += int((~passed).sum())
        drops["backward_inconsistent_inverse"] += int((~passed).sum())
    keep = np.ones(mined.num_rows, dtype=bool)
    keep[np.flatnonzero(judged)[~passed]] = False
    forwards = mined.filter(pa.array(keep))
    base = take(mined, np.flatnonzero(judged)[passed])
    good = verdict.filter(pa.array(passed))
    inverses = derived(
        base,
        inv.filter(pa.array(passed)),
        _scores(good.column("adherence")),
        _scores(good.column("aesthetic")),
        inverse_types(base.column("edit_type")),
        good.column("judge_id"),
        good.column("prompt_version"),
    )
    return forwards, inverses, drops


def composed_triplets(
    forwards: pa.Table, drafts: pa.Table, verdicts: pa.Table | None
) -> tuple[pa.Table, Counter[str]]:
    """Composed triplets (in draft order) whose parents are both consistent forwards and,
    when ``verdicts`` is given, that passed the validator; and the drops by reason.

    Without verdicts a composed triplet takes the lower of its parents' scores."""
    drops: Counter[str] = Counter()
    skipped, kinds = _skip_kinds(drafts.column("skip_reason"))
    _count_kinds(drops, "compose_skipped_", kinds.filter(pa.array(skipped)))
    ids = forwards.column("triplet_id")
    first = positions(pc.list_element(drafts.column("parents"), 0), ids)
    second = positions(pc.list_element(drafts.column("parents"), 1), ids)
    orphan = ~skipped & ((first < 0) | (second < 0))
    if orphan.any():
        drops["compose_parent_dropped"] += int(orphan.sum())
    ok = ~skipped & ~orphan
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
    a, b = take(forwards, first[rows]), take(forwards, second[rows])
    if verdicts is not None:
        verdict = take(verdicts, vpos[rows])
        adh, aes = _scores(verdict.column("adherence")), _scores(verdict.column("aesthetic"))
        judge, version = verdict.column("judge_id"), verdict.column("prompt_version")
    else:
        adh = np.minimum(_scores(a.column("adherence")), _scores(b.column("adherence")))
        aes = np.minimum(_scores(a.column("aesthetic")), _scores(b.column("aesthetic")))
        judge, version = b.column("judge_id"), b.column("judge_prompt_version")
    out = derived(b, take(drafts, rows), adh, aes, constant("composed", len(rows)), judge, version)
    return out, drops


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
        mined = self.tables.read("mined")
        return self.runner.run(stage, mined)

    def backward(self) -> StageResult | None:
        """Stage 9: the hard validator on every written inverse triplet."""
        if not self.cfg.bootstrap.inversion:
            return None
        drafts = self._written("inversion")
        stage = BackwardStage(
            self.backends().validator, self.tables.store.blobs, self.cfg.validation.threshold
        )
        return self.runner.run(stage, drafts)

    def _written(self, name: str) -> pa.Table:
        """Drafts of a writer table that carry an instruction (no skip reason)."""
        drafts = self.tables.read(name)
        skipped, _ = _skip_kinds(drafts.column("skip_reason"))
        return drafts.filter(pa.array(~skipped))

    def consistent(self) -> tuple[pa.Table, pa.Table, Counter[str]]:
        """Forwards and inverses that survive backward consistency, and the drops."""
        mined = self.tables.read("mined")
        if not self.cfg.bootstrap.inversion:
            return mined, TripletRow.schema().empty_table(), Counter()
        return backward_consistency(
            mined, self.tables.read("inversion"), self.tables.read("backward")
        )

    def compose_jobs(self) -> pa.Table:
        """The capped, seeded pairs of consistent edits that composition writes for."""
        forwards, inverses, _ = self.consistent()
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
        inputs = ["mined", "inversion", "backward", "composition", "composed_validator"]
        return self.runner.whole_table("triplets", inputs, self.settings(), self._assemble)

    def _assemble(self) -> tuple[pa.Table, dict[str, Any]]:
        """The ``triplets`` table and its figures."""
        forwards, inverses, drops = self.consistent()
        composed, compose_drops = self.composed(forwards)
        drops.update(compose_drops)
        rows = pa.concat_tables([forwards, inverses, composed])
        counts = {
            "mined": forwards.num_rows,
            "inverted": inverses.num_rows,
            "composed": composed.num_rows,
        }
        hashing: dict[str, Any] = {}
        if self.cfg.bootstrap.dedup:
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
        else:
            kept = rows
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


def chains(triplets: pa.Table) -> pa.Table:
    """Multi-turn chains I0 → Ie1 → Ie2 from kept composed triplets whose first edit is
    kept too: turn 1 is the mined edit, turn 2 the composed one. Columns: ``chain_id``,
    ``images``, ``instructions``, ``triplet_ids`` (lists) and ``width``, ``height``."""
    composed = triplets.filter(pc.equal(triplets.column("origin"), "composed"))
    first = positions(pc.list_element(composed.column("parents"), 0), triplets.column("triplet_id"))
    composed = composed.filter(pa.array(first >= 0))
    a = take(triplets, first[first >= 0])
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


__all__ = ["Bootstrap", "backward_consistency", "chains", "composed_triplets"]
