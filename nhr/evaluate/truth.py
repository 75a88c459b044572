"""The hard validator against the synthetic world's truth.

Only evaluation reads the truth. For every candidate the hard validator scored, the
world says whether the edit is really correct and how good it really is; from that come
the validator's pass precision (share of passes that are correct edits), its recall
(share of correct edits it passes), the Spearman ρ of its adherence score against the
true adherence, and the share of exported triplets that are correct.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from scipy.stats import spearmanr

if TYPE_CHECKING:
    from nhr.pipeline import Pipeline


# truth verdicts already computed, by (source blob, instruction, edited blob): a summary
# asks about the same mined pairs for the validator's figures and for the audit
TruthMemo = dict[tuple[str, str, str], Any]


def triplet_truth(
    pipe: Pipeline, source: str, instruction: str, edited: str, memo: TruthMemo | None = None
) -> Any:
    """The world's TripletTruth of (source blob, instruction, edited blob)."""
    key = (source, instruction, edited)
    if memo is not None and key in memo:
        return memo[key]
    truth = pipe.backends.truth
    if truth is None:
        raise ValueError("this run's world has no truth (only the synthetic world has one)")
    blobs = pipe.store.blobs
    verdict = truth.triplet(blobs.get(source), instruction, blobs.get(edited))
    if memo is not None:
        memo[key] = verdict
    return verdict


def candidate_truth(
    pipe: Pipeline, candidate_ids: set[str] | None = None, memo: TruthMemo | None = None
) -> dict[str, Any]:
    """Truth for candidates (all by default): id → the world's TripletTruth."""
    return {
        c.candidate_id: triplet_truth(pipe, c.source_image, c.instruction, c.image, memo)
        for c in pipe.rows("candidates")
        if candidate_ids is None or c.candidate_id in candidate_ids
    }


def judge_vs_truth(pipe: Pipeline, memo: TruthMemo | None = None) -> dict[str, Any]:
    """Precision, recall and Spearman ρ of the hard validator's verdicts against truth."""
    verdicts = [v for v in pipe.rows("validator") if v.error is None]
    truths = candidate_truth(pipe, {v.subject_id for v in verdicts}, memo)
    passed = [v for v in verdicts if v.passed]
    correct = [v for v in verdicts if truths[v.subject_id].correct]
    true_pos = sum(truths[v.subject_id].correct for v in passed)
    if len(verdicts) < 3:
        return {
            "scored": len(verdicts),
            "passed": len(passed),
            "precision": None,
            "recall": None,
            "spearman": None,
        }
    with warnings.catch_warnings():  # a constant input gives NaN, reported as None
        warnings.simplefilter("ignore")
        rho_adh = spearmanr(
            [v.adherence for v in verdicts], [truths[v.subject_id].adherence for v in verdicts]
        )
        rho_aes = spearmanr(
            [v.aesthetic for v in verdicts], [truths[v.subject_id].aesthetic for v in verdicts]
        )
    mined = pipe.triplets() if pipe.store.tables.exists("mined") else []
    mined_ok = sum(truths[t.candidate_id].correct for t in mined if t.candidate_id in truths)
    gate = gate_vs_truth(pipe)
    return {
        "scored": len(verdicts),
        "passed": len(passed),
        "truly_correct": len(correct),
        "precision": round(float(true_pos / len(passed)), 4) if passed else None,
        "recall": round(float(true_pos / len(correct)), 4) if correct else None,
        "spearman": _round(rho_adh.statistic),
        "spearman_aesthetic": _round(rho_aes.statistic),
        "mined_correct_share": round(float(mined_ok / len(mined)), 4) if mined else None,
        "gate_agreement": gate,
    }


def audit(pipe: Pipeline, memo: TruthMemo | None = None) -> dict[str, float | None]:
    """Share of exported triplets that are truly correct, by origin (mined, inverted,
    composed): the truth checks each (source, instruction, edited) as a whole, so an
    inverse or composed instruction is judged on the images it claims to connect."""
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for t in pipe.triplets():
        verdict = triplet_truth(pipe, t.source_image, t.instruction, t.edited_image, memo)
        total[t.origin] = total.get(t.origin, 0) + 1
        correct[t.origin] = correct.get(t.origin, 0) + bool(verdict.correct)
    return {o: round(correct[o] / total[o], 4) for o in sorted(total)}


def gate_vs_truth(pipe: Pipeline) -> float | None:
    """Share of sources where the plausibility gate agrees with the truth."""
    truth = pipe.backends.truth
    verdicts = {v.subject_id: v for v in pipe.rows("plausibility")}
    agree = total = 0
    for s in pipe.rows("sources"):
        if s.source_id in verdicts:
            total += 1
            agree += truth.source(pipe.store.blobs.get(s.image)).plausible == (
                verdicts[s.source_id].passed
            )
    return round(agree / total, 4) if total else None


def _round(x: float) -> float | None:
    """Round a statistic, mapping NaN (constant input) to None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 4)
