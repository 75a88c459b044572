"""Preference pairs: each mined triplet's accepted edit beside a rejected edit of the same
(source, instruction), for preference and reward-model training.

Users of peer pipelines ask for the rejected candidates and their scores; the run keeps
every verdict, so for each (source, instruction) with an accepted edit we pair it with up
to ``per_group`` rejected candidates, hardest first: those the hard validator scored
highest, then those a filter dropped before it. Passing candidates that merely lost the
argmax are good edits, not negatives, and are never used.
"""

from __future__ import annotations

from dataclasses import dataclass

from nhr.records import CandidateRow, TripletRow, Verdict


@dataclass(frozen=True)
class PreferencePair:
    """(source, instruction, chosen edit, rejected edit) with the rejected one's verdict."""

    pair_id: str
    triplet_id: str
    rejected_candidate_id: str
    source_image: str
    instruction: str
    chosen_image: str
    rejected_image: str
    chosen_adherence: float
    chosen_aesthetic: float
    rejected_stage: str
    rejected_reason: str
    rejected_adherence: float | None
    rejected_aesthetic: float | None
    width: int
    height: int


def preference_pairs(
    mined: list[TripletRow],
    candidates: list[CandidateRow],
    verdicts: dict[str, list[Verdict]],
    per_group: int = 1,
) -> list[PreferencePair]:
    """Pairs for every mined triplet; ``verdicts`` maps a stage name (``prefilter``,
    ``lowlevel``, ``validator``, in pipeline order) to its verdicts."""
    if per_group <= 0:
        return []
    failed: dict[str, tuple[int, str, Verdict]] = {}
    for rank, (stage, rows) in enumerate(verdicts.items()):
        for v in rows:
            if not v.passed and v.subject_id not in failed:
                failed[v.subject_id] = (rank, stage, v)
    groups: dict[tuple[str, str], list[CandidateRow]] = {}
    for c in candidates:
        if c.candidate_id in failed:
            groups.setdefault((c.source_id, c.instruction_id), []).append(c)
    by_id = {c.candidate_id: c for c in candidates}

    def hardness(c: CandidateRow) -> tuple[int, float, str]:
        """Later stage first, then higher scores: the negatives closest to a pass."""
        rank, _, v = failed[c.candidate_id]
        return (-rank, -(v.adherence or 0.0) * (v.aesthetic or 0.0), c.candidate_id)

    pairs = []
    for t in mined:
        chosen = by_id[t.candidate_id]
        group = groups.get((chosen.source_id, chosen.instruction_id), [])
        for c in sorted(group, key=hardness)[:per_group]:
            if c.image == chosen.image:
                continue
            _, stage, v = failed[c.candidate_id]
            pairs.append(
                PreferencePair(
                    pair_id=f"pref-{t.triplet_id}-{c.candidate_id}",
                    triplet_id=t.triplet_id,
                    rejected_candidate_id=c.candidate_id,
                    source_image=t.source_image,
                    instruction=t.instruction,
                    chosen_image=t.edited_image,
                    rejected_image=c.image,
                    chosen_adherence=t.adherence,
                    chosen_aesthetic=t.aesthetic,
                    rejected_stage=stage,
                    rejected_reason=v.reason,
                    rejected_adherence=v.adherence,
                    rejected_aesthetic=v.aesthetic,
                    width=t.width,
                    height=t.height,
                )
            )
    return pairs
