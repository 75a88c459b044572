"""Stage 3: the plausibility gate — does the source depict its prompt, realistically?"""

from __future__ import annotations

import json
from typing import Any

from nhr.backends.base import Judge
from nhr.records import SourceRow, Verdict
from nhr.stages.base import Stage
from nhr.store import BlobStore


class PlausibilityStage(Stage[SourceRow, Verdict]):
    """Writes a yes/no verdict for every source; a judge error is a fail, never a pass."""

    name = "plausibility"
    input_type = SourceRow
    output_type = Verdict
    backend_fields = ("judge",)

    def __init__(self, judge: Judge, blobs: BlobStore) -> None:
        self.judge = judge
        self.blobs = blobs

    def own_settings(self) -> dict[str, Any]:
        return {"judge": self.judge.judge_id, "prompt_version": self.judge.prompt_version}

    def process_batch(self, rows: list[SourceRow]) -> list[Verdict]:
        """Ask the judge about each source image and its prompt."""
        answers = self.judge.plausibility(
            [self.blobs.view(r.image) for r in rows], [r.prompt for r in rows]
        )
        out = []
        for row, ans in zip(rows, answers, strict=True):
            passed = ans.answer and ans.error is None
            reason = "ok" if passed else ("judge_error" if ans.error else "implausible")
            out.append(
                Verdict(
                    subject_id=row.source_id,
                    passed=passed,
                    reason=reason,
                    adherence=None,
                    aesthetic=None,
                    details=json.dumps({"why": ans.reason}),
                    judge_id=self.judge.judge_id,
                    prompt_version=self.judge.prompt_version,
                    error=ans.error,
                )
            )
        return out
