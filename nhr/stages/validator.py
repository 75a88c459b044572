"""Stage 7: the hard validator, and the argmax selection per (source, instruction)."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any

from nhr.backends.base import Judge
from nhr.records import CandidateRow, DraftRow, PromptRow, SourceRow, TripletRow, Verdict
from nhr.stages.base import Stage
from nhr.store import BlobStore


def geometric_score(adherence: float, aesthetic: float) -> float:
    """The paper's ranking score √(adherence · aesthetic)."""
    return math.sqrt(max(adherence, 0.0) * max(aesthetic, 0.0))


def edited_image_of(row: Any) -> str:
    """The edited image of a candidate (``image``) or of a triplet/draft (``edited_image``)."""
    return row.image if isinstance(row, CandidateRow) else row.edited_image


class ValidatorStage(Stage[CandidateRow, Verdict]):
    """Scores every candidate 1–5 on instruction adherence and aesthetics; pass iff both
    >= ``threshold``. Reasons: ``ok``, ``low_adherence``, ``low_aesthetic``, ``low_both``,
    ``judge_error`` (never a pass), or the judge's ``veto``. The judge's ``details`` (a raw
    answer, sub-scores) are kept in the verdict's ``details``."""

    name = "validator"
    input_type = CandidateRow
    output_type = Verdict

    def __init__(self, judge: Judge, blobs: BlobStore, threshold: float = 4.7) -> None:
        self.judge = judge
        self.blobs = blobs
        self.threshold = threshold

    def settings(self) -> dict[str, Any]:
        return {
            "judge": self.judge.judge_id,
            "prompt_version": self.judge.prompt_version,
            "threshold": self.threshold,
        }

    def process_batch(self, rows: list[Any]) -> list[Verdict]:
        """Score each (source, edit, instruction) and apply the threshold."""
        scores = self.judge.score(
            [self.blobs.get(r.source_image) for r in rows],
            [self.blobs.get(edited_image_of(r)) for r in rows],
            [r.instruction for r in rows],
        )
        out = []
        for row, s in zip(rows, scores, strict=True):
            low_adh, low_aes = s.adherence < self.threshold, s.aesthetic < self.threshold
            if s.error:
                reason = "judge_error"
            elif s.veto:
                reason = s.veto
            elif low_adh and low_aes:
                reason = "low_both"
            elif low_adh:
                reason = "low_adherence"
            elif low_aes:
                reason = "low_aesthetic"
            else:
                reason = "ok"
            out.append(
                Verdict(
                    subject_id=row.id,
                    passed=reason == "ok",
                    reason=reason,
                    adherence=float(s.adherence),
                    aesthetic=float(s.aesthetic),
                    details=json.dumps(
                        {"score": geometric_score(s.adherence, s.aesthetic), **s.details}
                    ),
                    judge_id=self.judge.judge_id,
                    prompt_version=self.judge.prompt_version,
                    error=s.error,
                )
            )
        return out


class BackwardStage(ValidatorStage):
    """Stage 9, backward consistency: the hard validator on inverse triplets (Ie, p⁻¹, I0)."""

    name = "backward"
    input_type = DraftRow


class ComposedValidatorStage(ValidatorStage):
    """The hard validator on composed triplets (Ie1, p′, Ie2)."""

    name = "composed_validator"
    input_type = DraftRow


def select_argmax(
    candidates: list[CandidateRow],
    verdicts: list[Verdict],
    sources: dict[str, SourceRow],
    prompts: dict[str, PromptRow],
) -> tuple[list[TripletRow], dict[str, int]]:
    """Keep, per (source, instruction), the passed candidate with the highest
    √(adh·aes) (ties: lowest candidate id). Returns the mined triplets and the drops by
    reason (``not_argmax`` for passed candidates that lost to a sibling)."""
    by_id = {c.candidate_id: c for c in candidates}
    groups: dict[tuple[str, str], list[tuple[float, str, Verdict]]] = defaultdict(list)
    for v in verdicts:
        if v.passed:
            c = by_id[v.subject_id]
            score = geometric_score(v.adherence or 0.0, v.aesthetic or 0.0)
            groups[(c.source_id, c.instruction_id)].append((-score, c.candidate_id, v))
    drops: Counter[str] = Counter()
    triplets = []
    for key in sorted(groups):
        ranked = sorted(groups[key], key=lambda t: (t[0], t[1]))
        drops["not_argmax"] += len(ranked) - 1
        neg_score, cid, v = ranked[0]
        c, src = by_id[cid], sources[by_id[cid].source_id]
        prompt = prompts[c.prompt_id]
        triplets.append(
            TripletRow(
                triplet_id=f"m-{cid}",
                origin="mined",
                parents=(cid,),
                source_image=c.source_image,
                edited_image=c.image,
                instruction=c.instruction,
                edit_type=c.edit_type,
                style=c.style,
                width=c.width,
                height=c.height,
                adherence=float(v.adherence or 0.0),
                aesthetic=float(v.aesthetic or 0.0),
                score=-neg_score,
                prompt_id=c.prompt_id,
                prompt=prompt.text,
                source_id=c.source_id,
                candidate_id=cid,
                t2i_model=src.model_id,
                t2i_seed=src.seed,
                t2i_steps=src.steps,
                editor_model=c.model_id,
                edit_seed=c.seed,
                edit_steps=c.steps,
                edit_guidance=c.guidance,
                prompter_version=prompt.prompter_version,
                writer_version=prompt.prompter_version,
                judge_id=v.judge_id,
                judge_prompt_version=v.prompt_version,
            )
        )
    return triplets, dict(drops)
