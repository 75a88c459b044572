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
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.tables import RunTables, positions

# truth verdicts already computed, by (source blob, instruction, edited blob): a summary
# asks about the same mined pairs for the validator's figures and for the audit
TruthMemo = dict[tuple[str, str, str], Any]


def _truth(truth: Any) -> Any:
    """``truth``, or a clear error when the run's world has none."""
    if truth is None:
        raise ValueError("this run's world has no truth (only the synthetic world has one)")
    return truth


def triplet_truth(
    tables: RunTables,
    truth: Any,
    source: str,
    instruction: str,
    edited: str,
    memo: TruthMemo | None = None,
) -> Any:
    """The world's TripletTruth of (source blob, instruction, edited blob)."""
    key = (source, instruction, edited)
    if memo is not None and key in memo:
        return memo[key]
    blobs = tables.store.blobs
    verdict = _truth(truth).triplet(blobs.get(source), instruction, blobs.get(edited))
    if memo is not None:
        memo[key] = verdict
    return verdict


def truths_of(
    tables: RunTables,
    truth: Any,
    rows: pa.Table,
    memo: TruthMemo | None = None,
    images: Sequence[str] = ("source_image", "instruction", "edited_image"),
) -> list[Any]:
    """The world's TripletTruth of each row of ``rows`` (the columns ``images`` name the
    source, instruction and edited image); each distinct triple is judged once."""
    memo = {} if memo is None else memo
    cols = [rows.column(name).to_pylist() for name in images]
    return [triplet_truth(tables, truth, s, i, e, memo) for s, i, e in zip(*cols, strict=True)]


def candidate_truth(
    tables: RunTables,
    truth: Any,
    candidate_ids: pa.Array | Sequence[str] | None = None,
    memo: TruthMemo | None = None,
) -> dict[str, Any]:
    """Truth for candidates (all by default): id → the world's TripletTruth."""
    cands = tables.read("candidates", ["candidate_id", "source_image", "instruction", "image"])
    if candidate_ids is not None:
        wanted = (
            pa.array(list(candidate_ids), pa.string())
            if not isinstance(candidate_ids, pa.Array)
            else candidate_ids
        )
        cands = cands.filter(pc.is_in(cands.column("candidate_id"), value_set=wanted))
    verdicts = truths_of(tables, truth, cands, memo, ("source_image", "instruction", "image"))
    return dict(zip(cands.column("candidate_id").to_pylist(), verdicts, strict=True))


def judge_vs_truth(tables: RunTables, truth: Any, memo: TruthMemo | None = None) -> dict[str, Any]:
    """Precision, recall and Spearman ρ of the hard validator's verdicts against truth,
    and the share of mined triplets (origin ``mined`` only) that are truly correct."""
    _truth(truth)
    verdicts = tables.read("validator", ["subject_id", "passed", "adherence", "aesthetic", "error"])
    verdicts = verdicts.filter(pc.is_null(verdicts.column("error")))
    passed = pc.fill_null(verdicts.column("passed"), False).to_numpy(zero_copy_only=False)
    scored = verdicts.num_rows
    if scored < 3:
        return {
            "scored": scored,
            "passed": int(passed.sum()),
            "precision": None,
            "recall": None,
            "spearman": None,
        }
    truths = candidate_truth(tables, truth, verdicts.column("subject_id").combine_chunks(), memo)
    ids = verdicts.column("subject_id").to_pylist()
    correct = np.array([bool(truths[i].correct) for i in ids])
    true_adh = np.array([truths[i].adherence for i in ids], dtype=np.float64)
    true_aes = np.array([truths[i].aesthetic for i in ids], dtype=np.float64)
    true_pos = int((correct & passed).sum())
    with warnings.catch_warnings():  # a constant input gives NaN, reported as None
        warnings.simplefilter("ignore")
        from scipy.stats import spearmanr  # 0.8 s to import: only where a run is audited

        rho_adh = spearmanr(_floats(verdicts.column("adherence")), true_adh)
        rho_aes = spearmanr(_floats(verdicts.column("aesthetic")), true_aes)
    mined_share = None
    if tables.exists("mined"):
        mined = tables.by_origin("mined", ["candidate_id"]).column("candidate_id").to_pylist()
        judged = [truths[c].correct for c in mined if c in truths]
        mined_share = round(float(sum(judged) / len(mined)), 4) if mined else None
    return {
        "scored": scored,
        "passed": int(passed.sum()),
        "truly_correct": int(correct.sum()),
        "precision": round(true_pos / int(passed.sum()), 4) if passed.any() else None,
        "recall": round(true_pos / int(correct.sum()), 4) if correct.any() else None,
        "spearman": _round(rho_adh.statistic),
        "spearman_aesthetic": _round(rho_aes.statistic),
        "mined_correct_share": mined_share,
        "gate_agreement": gate_vs_truth(tables, truth),
    }


def audit(tables: RunTables, truth: Any, memo: TruthMemo | None = None) -> dict[str, float | None]:
    """Share of exported triplets that are truly correct, by origin (mined, inverted,
    composed): the truth checks each (source, instruction, edited) as a whole, so an
    inverse or composed instruction is judged on the images it claims to connect."""
    rows = tables.triplets(["origin", "source_image", "instruction", "edited_image"])
    correct = np.array([bool(v.correct) for v in truths_of(tables, truth, rows, memo)])
    origins = np.asarray(rows.column("origin").to_pylist(), dtype=object)
    return {o: round(float(correct[origins == o].mean()), 4) for o in sorted(set(origins.tolist()))}


def gate_vs_truth(tables: RunTables, truth: Any) -> float | None:
    """Share of sources where the plausibility gate agrees with the truth."""
    sources = tables.read("sources", ["source_id", "image"])
    verdicts = tables.passed_mask("plausibility")
    pos = positions(sources.column("source_id"), verdicts.column("subject_id"))
    judged = pos >= 0
    if not judged.any():
        return None
    images = np.asarray(sources.column("image").to_pylist(), dtype=object)[judged]
    gate = pc.fill_null(verdicts.column("passed"), False).to_numpy(zero_copy_only=False)[
        pos[judged]
    ]
    blobs = tables.store.blobs
    plausible = np.array([_truth(truth).source(blobs.get(rel)).plausible for rel in images])
    return round(float((plausible == gate).mean()), 4)


def _floats(values: Any) -> np.ndarray:
    """A nullable float column as numpy (null → NaN)."""
    return pc.fill_null(values, float("nan")).to_numpy(zero_copy_only=False).astype(np.float64)


def _round(x: float) -> float | None:
    """Round a statistic, mapping NaN (constant input) to None."""
    x = float(x)
    return None if math.isnan(x) else round(x, 4)
