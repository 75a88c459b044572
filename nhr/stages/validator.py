"""Stage 7: the hard validator, and the argmax selection per (source, instruction)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr import slices
from nhr.backends.base import Judge
from nhr.records import CandidateRow, DraftRow, TripletRow, Verdict
from nhr.slices import rows_where
from nhr.stages.base import Stage
from nhr.store import BlobStore
from nhr.tables import (
    RunTables,
    constant,
    flat,
    group_starts,
    required_positions,
    take,
    typed_table,
)


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
    backend_fields = ("judge",)

    def __init__(self, judge: Judge, blobs: BlobStore, threshold: float = 4.7) -> None:
        self.judge = judge
        self.blobs = blobs
        self.threshold = threshold

    def own_settings(self) -> dict[str, Any]:
        return {
            "judge": self.judge.judge_id,
            "prompt_version": self.judge.prompt_version,
            "threshold": self.threshold,
        }

    def process_batch(self, rows: list[Any]) -> list[Verdict]:
        """Score each (source, edit, instruction) and apply the threshold."""
        scores = self.judge.score(
            [self.blobs.view(r.source_image) for r in rows],
            [self.blobs.view(edited_image_of(r)) for r in rows],
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


def geometric_scores(adherence: pa.ChunkedArray, aesthetic: pa.ChunkedArray) -> np.ndarray:
    """√(adherence · aesthetic) of whole columns; a missing score counts as 0."""
    adh = np.nan_to_num(pc.fill_null(adherence, 0.0).to_numpy(zero_copy_only=False), nan=0.0)
    aes = np.nan_to_num(pc.fill_null(aesthetic, 0.0).to_numpy(zero_copy_only=False), nan=0.0)
    return np.sqrt(np.maximum(adh, 0.0) * np.maximum(aes, 0.0))


def argmax_order(
    keys: pa.Table, verdicts: pa.Table
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Per (source, instruction), the passed verdict whose candidate has the highest
    √(adh·aes) (ties: lowest candidate id). ``keys`` holds ``candidate_id``,
    ``source_id`` and ``instruction_id`` of each verdict's candidate (row for row).
    Returns the winning rows (ordered by source and instruction id), their scores and the
    drops by reason (``not_argmax`` for passed candidates that lost to a sibling)."""
    scores = geometric_scores(verdicts.column("adherence"), verdicts.column("aesthetic"))
    ranked = pa.table(
        {
            "source_id": keys.column("source_id"),
            "instruction_id": keys.column("instruction_id"),
            "score": scores,
            "candidate_id": keys.column("candidate_id"),
            "row": np.arange(verdicts.num_rows),
        }
    ).sort_by(
        [
            ("source_id", "ascending"),
            ("instruction_id", "ascending"),
            ("score", "descending"),
            ("candidate_id", "ascending"),
        ]
    )
    starts = group_starts(ranked, ["source_id", "instruction_id"])
    drops = {"not_argmax": int(verdicts.num_rows - len(starts))} if len(starts) else {}
    rows = ranked.column("row").to_numpy()[starts].astype(np.int64)
    return rows, scores[rows], drops


def mined_triplets(
    c: pa.Table, v: pa.Table, score: np.ndarray, sources: pa.Table, prompts: pa.Table
) -> pa.Table:
    """The mined triplets (a ``TripletRow`` table), row i from winning candidate ``c`` i,
    its verdict ``v`` i and score i, with its source's and prompt's provenance."""
    spos = required_positions(c.column("source_id"), sources.column("source_id"), "source")
    ppos = required_positions(c.column("prompt_id"), prompts.column("prompt_id"), "prompt")
    src = sources.take(pa.array(spos, pa.int64()))
    prm = prompts.take(pa.array(ppos, pa.int64()))
    cid = flat(c.column("candidate_id"))
    n = len(cid)
    columns = {
        "triplet_id": pc.binary_join_element_wise("m-", cid, ""),
        "origin": constant("mined", n),
        "parents": pa.ListArray.from_arrays(pa.array(np.arange(n + 1), pa.int32()), cid),
        "source_image": c.column("source_image"),
        "edited_image": c.column("image"),
        "instruction": c.column("instruction"),
        "edit_type": c.column("edit_type"),
        "style": c.column("style"),
        "width": c.column("width"),
        "height": c.column("height"),
        "adherence": pc.fill_null(v.column("adherence"), 0.0),
        "aesthetic": pc.fill_null(v.column("aesthetic"), 0.0),
        "score": score,
        "prompt_id": c.column("prompt_id"),
        "prompt": prm.column("text"),
        "source_id": c.column("source_id"),
        "candidate_id": cid,
        "t2i_model": src.column("model_id"),
        "t2i_seed": src.column("seed"),
        "t2i_steps": src.column("steps"),
        "editor_model": c.column("model_id"),
        "edit_seed": c.column("seed"),
        "edit_steps": c.column("steps"),
        "edit_guidance": c.column("guidance"),
        "prompter_version": prm.column("prompter_version"),
        "writer_version": prm.column("prompter_version"),
        "judge_id": v.column("judge_id"),
        "judge_prompt_version": v.column("prompt_version"),
    }
    return typed_table(columns, TripletRow.schema())


def select_argmax(
    candidates: pa.Table,
    verdicts: pa.Table,
    sources: pa.Table,
    prompts: pa.Table,
) -> tuple[pa.Table, dict[str, int]]:
    """Keep, per (source, instruction), the passed candidate with the highest
    √(adh·aes) (ties: lowest candidate id). Returns the mined triplets (a ``TripletRow``
    table, ordered by source and instruction id) and the drops by reason
    (``not_argmax`` for passed candidates that lost to a sibling); all at once (see
    :func:`argmax_order` and :func:`mined_triplets`)."""
    passed = verdicts.filter(pc.fill_null(verdicts.column("passed"), False))
    cpos = required_positions(
        passed.column("subject_id"), candidates.column("candidate_id"), "validated candidate"
    )
    cand = candidates.take(pa.array(cpos, pa.int64()))
    rows, score, drops = argmax_order(cand, passed)
    at = pa.array(rows, pa.int64())
    return mined_triplets(cand.take(at), passed.take(at), score, sources, prompts), drops


# what the ``mined`` table depends on, and the columns of a winning candidate it reads
SELECT_INPUTS = ["candidates", "validator", "sources", "prompts"]
WINNER_COLUMNS = [
    "candidate_id",
    "source_id",
    "prompt_id",
    "instruction",
    "edit_type",
    "style",
    "source_image",
    "image",
    "width",
    "height",
    "seed",
    "steps",
    "guidance",
    "model_id",
]


def select_mined(tables: RunTables) -> tuple[Iterator[pa.Table], dict[str, Any]]:
    """:func:`select_argmax` over a run's tables: the mined triplets in parts of at most
    ``slices.SLICE_ROWS`` rows, and the selection's figures.

    The ranking reads the passed verdicts and their candidates' keys (narrow columns);
    the winners' own columns (those a triplet takes) come a slice at a time, from one
    pass over the candidates (:func:`slices.rows_in_slices`).
    """
    passed = tables.read_filtered(
        "validator",
        lambda t: pc.fill_null(t.column("passed"), False),
        ["subject_id", "passed", "adherence", "aesthetic", "judge_id", "prompt_version"],
    )
    ids = passed.column("subject_id")
    keys, where = rows_where(
        tables, "candidates", "candidate_id", ids, ["candidate_id", "source_id", "instruction_id"]
    )
    at = required_positions(ids, keys.column("candidate_id"), "validated candidate")
    rows, score, drops = argmax_order(take(keys, at), passed)
    figures = {"rows_in": passed.num_rows, "rows_out": len(rows), "drops_by_reason": drops}
    verdicts = take(passed, rows)
    del passed
    winners = where[at[rows]]  # their rows in the candidates table, in output order
    sources = tables.read_where(
        "sources",
        "source_id",
        pc.unique(flat(take(keys, at[rows]).column("source_id"))),
        ["source_id", "model_id", "seed", "steps"],
    )
    prompts = tables.read("prompts", ["prompt_id", "text", "prompter_version"])

    def parts() -> Iterator[pa.Table]:
        found = slices.rows_in_slices(tables, "candidates", WINNER_COLUMNS, winners)
        for lo, c in zip(range(0, len(rows), slices.SLICE_ROWS), found, strict=True):
            part = slice(lo, lo + c.num_rows)
            yield mined_triplets(c, verdicts.slice(lo, c.num_rows), score[part], sources, prompts)

    return parts(), figures
