"""Bootstrapping (stages 8–10 and dedup): grow the mined set without one more diffusion step.

Order: inversion (p → p⁻¹) → backward consistency (the hard validator on every inverse
triplet; a failing inverse drops its forward triplet too) → composition of pairs of
consistent edits of one source (scored by the hard validator, on by default) → dedup.
``assemble`` writes the final ``triplets`` table that the export reads, and counts every
drop by its reason.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from nhr.records import DraftRow, TripletRow, Verdict, to_table
from nhr.runner import StageResult
from nhr.stages.composition import CompositionStage, plan_compose_jobs
from nhr.stages.dedup import dedup
from nhr.stages.export import Chain
from nhr.stages.inversion import INVERSE_TYPES, InversionStage
from nhr.stages.validator import BackwardStage, ComposedValidatorStage, geometric_score

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline


def backward_consistency(
    mined: list[TripletRow], drafts: list[DraftRow], verdicts: list[Verdict]
) -> tuple[list[TripletRow], list[TripletRow], Counter[str]]:
    """(forwards kept, inverse triplets kept, drops by reason).

    A forward whose inverse was written and failed the validator is dropped together with
    its inverse (``backward_inconsistent`` counts each side); a forward whose inverse was
    skipped is kept, and the skip is counted as ``inverse_skipped_<kind>``.
    """
    by_forward = {d.parents[0]: d for d in drafts}
    by_id = {v.subject_id: v for v in verdicts}
    forwards, inverses = [], []
    drops: Counter[str] = Counter()
    for t in mined:
        draft = by_forward.get(t.triplet_id)
        if draft is None:
            forwards.append(t)
            continue
        if draft.skip_reason:
            drops[f"inverse_skipped_{draft.skip_reason.split(':', 1)[0]}"] += 1
            forwards.append(t)
            continue
        verdict = by_id.get(draft.triplet_id)
        if verdict is None:
            raise ValueError(f"inverse {draft.triplet_id} has no backward verdict: run backward()")
        if not verdict.passed:
            drops["backward_inconsistent_forward"] += 1
            drops["backward_inconsistent_inverse"] += 1
            continue
        forwards.append(t)
        inverses.append(_derived(t, draft, verdict, INVERSE_TYPES.get(t.edit_type, t.edit_type)))
    return forwards, inverses, drops


def _derived(
    base: TripletRow,
    draft: DraftRow,
    verdict: Verdict | None,
    edit_type: str,
    fallback: tuple[float, float] | None = None,
) -> TripletRow:
    """A bootstrapped triplet from its draft, scored by ``verdict`` (or ``fallback``)."""
    adh, aes = (verdict.adherence, verdict.aesthetic) if verdict else fallback or (0.0, 0.0)
    adh, aes = float(adh or 0.0), float(aes or 0.0)
    return TripletRow(
        **{
            **base.to_row(),
            "triplet_id": draft.triplet_id,
            "origin": draft.origin,
            "parents": draft.parents,
            "source_image": draft.source_image,
            "edited_image": draft.edited_image,
            "instruction": draft.instruction,
            "edit_type": edit_type,
            "adherence": adh,
            "aesthetic": aes,
            "score": geometric_score(adh, aes),
            "writer_version": draft.writer_version,
            "judge_id": verdict.judge_id if verdict else base.judge_id,
            "judge_prompt_version": verdict.prompt_version
            if verdict
            else base.judge_prompt_version,
        }
    )


class Bootstrap:
    """The bootstrapping stages of one pipeline."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe

    @property
    def cfg(self) -> Any:
        """The pipeline's config."""
        return self.pipe.cfg

    def invert(self) -> StageResult | None:
        """Stage 8: an inverse instruction for every mined triplet (None when disabled)."""
        if not self.cfg.bootstrap.inversion:
            return None
        stage = InversionStage(self.pipe.backends.inverter)
        return self.pipe.runner.run(stage, self.pipe.rows("mined"))

    def backward(self) -> StageResult | None:
        """Stage 9: the hard validator on every written inverse triplet."""
        if not self.cfg.bootstrap.inversion:
            return None
        drafts = [d for d in self.pipe.rows("inversion") if not d.skip_reason]
        stage = BackwardStage(
            self.pipe.backends.validator, self.pipe.store.blobs, self.cfg.validation.threshold
        )
        return self.pipe.runner.run(stage, drafts)

    def consistent(self) -> tuple[list[TripletRow], list[TripletRow], Counter[str]]:
        """Forwards and inverses that survive backward consistency, and the drops."""
        mined = self.pipe.rows("mined")
        if not self.cfg.bootstrap.inversion:
            return mined, [], Counter()
        return backward_consistency(mined, self.pipe.rows("inversion"), self.pipe.rows("backward"))

    def compose(self) -> StageResult | None:
        """Stage 10: composed instructions for capped pairs of consistent edits."""
        if not (self.cfg.bootstrap.inversion and self.cfg.bootstrap.composition):
            return None
        forwards, inverses, _ = self.consistent()
        texts = {i.parents[0]: i.instruction for i in inverses}
        jobs = plan_compose_jobs(
            forwards, texts, self.cfg.bootstrap.compose_max_pairs, self.cfg.run.seed
        )
        stage = CompositionStage(self.pipe.backends.inverter)
        return self.pipe.runner.run(stage, jobs)

    def validate_composed(self) -> StageResult | None:
        """The hard validator on composed triplets (when COMPOSE_VALIDATE)."""
        if not (
            self.cfg.bootstrap.inversion
            and self.cfg.bootstrap.composition
            and self.cfg.bootstrap.compose_validate
        ):
            return None
        drafts = [d for d in self.pipe.rows("composition") if not d.skip_reason]
        stage = ComposedValidatorStage(
            self.pipe.backends.validator, self.pipe.store.blobs, self.cfg.validation.threshold
        )
        return self.pipe.runner.run(stage, drafts)

    def composed(self, forwards: list[TripletRow]) -> tuple[list[TripletRow], Counter[str]]:
        """Composed triplets that pass (both parents consistent), and the drops."""
        drops: Counter[str] = Counter()
        if not (self.cfg.bootstrap.inversion and self.cfg.bootstrap.composition):
            return [], drops
        by_id = {t.triplet_id: t for t in forwards}
        verdicts = (
            {v.subject_id: v for v in self.pipe.rows("composed_validator")}
            if self.cfg.bootstrap.compose_validate
            else {}
        )
        out = []
        for d in self.pipe.rows("composition"):
            if d.skip_reason:
                drops[f"compose_skipped_{d.skip_reason.split(':', 1)[0]}"] += 1
                continue
            first, second = by_id.get(d.parents[0]), by_id.get(d.parents[1])
            if first is None or second is None:
                drops["compose_parent_dropped"] += 1
                continue
            verdict = verdicts.get(d.triplet_id)
            if self.cfg.bootstrap.compose_validate and (verdict is None or not verdict.passed):
                drops["compose_failed_validator"] += 1
                continue
            fallback = (
                min(first.adherence, second.adherence),
                min(first.aesthetic, second.aesthetic),
            )
            out.append(_derived(second, d, verdict, "composed", fallback))
        return out, drops

    def assemble(self) -> StageResult:
        """Consistent forwards + inverses + composed → dedup → the ``triplets`` table."""
        with self.pipe.runner.writing("assemble"):
            t0 = time.perf_counter()
            forwards, inverses, drops = self.consistent()
            composed, compose_drops = self.composed(forwards)
            drops.update(compose_drops)
            rows = forwards + inverses + composed
            counts = {"mined": len(forwards), "inverted": len(inverses), "composed": len(composed)}
            if self.cfg.bootstrap.dedup:
                kept, dedup_drops, _ = dedup(
                    rows, self.pipe.store.blobs.get, self.cfg.bootstrap.dedup_max_distance
                )
                drops.update(dedup_drops)
            else:
                kept = rows
            self.pipe.store.tables.write_shard(
                "triplets",
                "all",
                to_table(kept, TripletRow),
                [],
                {"settings_hash": "whole-table"},
            )
            stats = {
                "stage": "triplets",
                "rows_in": len(rows),
                "rows_out": len(kept),
                "by_origin_before_dedup": counts,
                "by_origin": dict(Counter(t.origin for t in kept)),
                "drops_by_reason": dict(sorted(drops.items())),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            self.pipe.store.write_stats("triplets", stats)
            return StageResult("triplets", kept, stats)

    def chains(self, triplets: list[TripletRow]) -> list[Chain]:
        """Multi-turn chains I0 → Ie1 → Ie2 from kept composed triplets whose first edit
        is kept too: turn 1 is the mined edit, turn 2 the composed one."""
        by_id = {t.triplet_id: t for t in triplets}
        out = []
        for t in triplets:
            if t.origin != "composed" or t.parents[0] not in by_id:
                continue
            first = by_id[t.parents[0]]
            out.append(
                Chain(
                    chain_id=f"chain-{t.triplet_id}",
                    images=(first.source_image, first.edited_image, t.edited_image),
                    instructions=(first.instruction, t.instruction),
                    triplet_ids=(first.triplet_id, t.triplet_id),
                    width=t.width,
                    height=t.height,
                )
            )
        return out


def multiplier(exported: int, mined: int) -> float | None:
    """Exported triplets per mined forward triplet (the paper: 2.2× v1, 2.6× v2)."""
    return round(exported / mined, 4) if mined else None


__all__ = ["Bootstrap", "backward_consistency", "multiplier"]
