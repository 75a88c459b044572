"""An ImgEdit-Judge judge: three 1–5 criteria in labelled lines of free text.

ImgEdit (``Benchmark/Basic/prompts.json``) rates an edit on a 5-point scale from three
perspectives, the first always the instruction's (``Prompt Compliance``), then visual
quality (``Visual Naturalness`` / ``Visual Seamlessness``) and physical and detail
consistency (``Physical & Detail Integrity`` / ``Fidelity`` / ``Coherence``), and asks
for the answer as::

    Brief reasoning: <at most 20 words>
    Prompt Compliance: <1-5>
    Visual Naturalness: <1-5>
    Physical & Detail Integrity: <1-5>

ImgEdit-Judge (Qwen2.5-VL-7B tuned on those ratings) answers in that form; ImgEdit's own
scorer reads every ``label: integer`` line and averages them. Its prompts are written per
edit type (add, remove, replace, adjust, ...) with that type's labels; a judge here sees
only the instruction, so the prompt (``imgedit_v2.txt``) is the general one the add,
remove and replace prompts share (the same three criteria, the same labels), with the
images after the text as in ImgEdit's own calls.

The parser reads the score lines in order, whatever their labels (bold markers, ``4/5``
and decimals are understood); exactly three are needed, each within 1–5, else the
answer is an error verdict (never a pass). The mapping onto the validator's scale:
adherence = the first score (compliance), aesthetic = the mean of the other two; the
three scores, their labels, ImgEdit's per-item score (their mean), the reasoning and the
raw text are kept in ``details``.
"""

from __future__ import annotations

import re
from typing import Any

from nhr.backends.api_client import CallError
from nhr.backends.base import Scores
from nhr.backends.judge_format import FormatJudge

# "Label: 4", "**Label:** 4", "Label: 4/5", "Label: 4.5"; not "Brief reasoning: text"
_LINE = re.compile(
    r"^[\s*_#-]*([A-Za-z][^:\n]{1,60}?)[\s*_]*:[\s*_]*(-?\d+(?:\.\d+)?)[\s*_]*(?:/\s*5)?[\s*_.]*$",
    re.MULTILINE,
)
CRITERIA = ("compliance", "naturalness", "physical")


def parse_imgedit(value: Any) -> Scores:
    """Scores from an ImgEdit-Judge answer (the mapping is in the module docstring)."""
    if not isinstance(value, str) or not value.strip():
        raise CallError("schema_violation", "expected a text answer")
    found = [(m.group(1).strip(), float(m.group(2))) for m in _LINE.finditer(value)]
    if len(found) != 3:
        raise CallError(
            "schema_violation",
            f"{len(found)} labelled 1-5 score lines, not 3, in {value[:80]!r}",
        )
    for label, score in found:
        if not 1.0 <= score <= 5.0:
            raise CallError("out_of_range", f"{label}={score:g} is outside 1-5")
    values = [score for _, score in found]
    reasoning = re.search(r"reasoning\**\s*:\s*(.+)", value, re.IGNORECASE)
    details: dict[str, Any] = {
        **dict(zip(CRITERIA, values, strict=True)),
        "labels": [label for label, _ in found],
        "overall": round(sum(values) / 3, 4),
        "reasoning": reasoning.group(1).strip()[:500] if reasoning else "",
    }
    return Scores(values[0], round((values[1] + values[2]) / 2, 4), details=details)


class ImgEditJudge(FormatJudge):
    """The hard validator as ImgEdit-Judge (free text, three labelled 1–5 criteria)."""

    style = "imgedit"
    template_name = "imgedit"
    template_version = 2
    free_text = True

    def parse(self, value: Any) -> Scores:
        """See ``parse_imgedit``."""
        return parse_imgedit(value)
