"""An ImgEdit-Judge style judge: two 1–5 scores in free text.

ImgEdit-Judge (a Qwen2.5-VL-7B tuned on ImgEdit's ratings) writes its verdict as text,
not JSON, e.g. ``Score 1 (Prompt Compliance): 4`` / ``Reason: ...`` / ``Score 2: 3``.
The request asks for free text (no structured output, prompt ``imgedit_v1.txt``) and the
parser reads it robustly: case, bold markers, a label in brackets, ``4/5`` or ``4 out of
5`` and named labels (``Prompt Compliance``, ``Visual Quality`` / ``Naturalness``)
without the number are all understood. Score 1 is the adherence and Score 2 the
aesthetic, both already on 1–5. A missing score, one outside 1–5, or two different
values for one score is an error verdict (never a pass); the raw text is kept.
"""

from __future__ import annotations

import re
from typing import Any

from nhr.backends.api_client import CallError
from nhr.backends.base import Scores
from nhr.backends.judge_format import FormatJudge

_NUMBER = r"\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*(?:/\s*5(?:\.0)?|out\s+of\s+5)?"
_PATTERNS = {
    1: (
        re.compile(r"score\s*1\b[^\n:=\d]*[:=]\s*" + _NUMBER, re.IGNORECASE),
        re.compile(
            r"(?:prompt\s+compliance|instruction\s+(?:following|adherence))\**\s*[:=]\s*" + _NUMBER,
            re.IGNORECASE,
        ),
    ),
    2: (
        re.compile(r"score\s*2\b[^\n:=\d]*[:=]\s*" + _NUMBER, re.IGNORECASE),
        re.compile(
            r"(?:visual\s+(?:quality|naturalness)|image\s+quality|aesthetics?)\**\s*[:=]\s*"
            + _NUMBER,
            re.IGNORECASE,
        ),
    ),
}


def _find(text: str, k: int) -> float:
    """The value of Score k: the numbered form, else the named label."""
    for pattern in _PATTERNS[k]:
        found = {float(m.group(1)) for m in pattern.finditer(text)}
        if len(found) > 1:
            raise CallError("schema_violation", f"Score {k} is given twice: {sorted(found)}")
        if found:
            value = found.pop()
            if not 1.0 <= value <= 5.0:
                raise CallError("out_of_range", f"Score {k}={value:g} is outside 1-5")
            return value
    raise CallError("schema_violation", f"no Score {k} in {text[:80]!r}")


def parse_imgedit(value: Any) -> Scores:
    """Scores from an ImgEdit-Judge style text answer."""
    if not isinstance(value, str) or not value.strip():
        raise CallError("schema_violation", "expected a text answer")
    adherence, aesthetic = _find(value, 1), _find(value, 2)
    return Scores(adherence, aesthetic, details={"score_1": adherence, "score_2": aesthetic})


class ImgEditJudge(FormatJudge):
    """The hard validator as an ImgEdit-Judge style judge (free text, two 1–5 scores)."""

    style = "imgedit"
    template_name = "imgedit"
    free_text = True

    def parse(self, value: Any) -> Scores:
        """See ``parse_imgedit``."""
        return parse_imgedit(value)
