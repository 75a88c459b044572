"""A VIEScore / EditScore style judge: 0–10 sub-scores with reasoning, as JSON.

VIEScore (the GEdit-Bench standard) and EditScore rate an edit on 0–10: semantic
consistency (SC: the instruction carried out, nothing else changed) and perceptual
quality (PQ), overall O = √(SC·PQ). Here one call answers
``{"reasoning", "prompt_following", "consistency", "perceptual_quality"}`` (prompt
``viescore_v1.txt``), and the stated mapping onto the validator's 1–5 scale is

    SC = min(prompt_following, consistency)     (VIEScore takes the min of SC's parts)
    PQ = perceptual_quality
    adherence = 1 + 0.4 · SC,  aesthetic = 1 + 0.4 · PQ    (0 → 1, 10 → 5, linear)

so the paper's threshold 4.7 asks for SC ≥ 9.25 and PQ ≥ 9.25. The sub-scores, SC, PQ,
O (0–10), the reasoning and the raw answer are kept in the verdict's ``details``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from nhr.backends.api_client import CallError
from nhr.backends.base import Scores
from nhr.backends.judge_format import FormatJudge

SUB_SCORES = ("prompt_following", "consistency", "perceptual_quality")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string"},
        **{name: {"type": "number", "minimum": 0, "maximum": 10} for name in SUB_SCORES},
    },
    "required": ["reasoning", *SUB_SCORES],
}


def to_validator_scale(x: float) -> float:
    """A 0–10 score on the validator's 1–5 scale (linear: 0 → 1, 10 → 5)."""
    return round(1.0 + 0.4 * x, 4)


def _sub_score(obj: dict[str, Any], name: str) -> float:
    """A 0–10 field: a number, or a string holding one (open models write "7")."""
    if name not in obj:
        raise CallError("schema_violation", f"missing {name}")
    value = obj[name]
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise CallError("schema_violation", f"{name} is {value!r:.40}, not a number") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CallError("schema_violation", f"{name} is {value!r:.40}, not a number")
    if not math.isfinite(value) or not 0.0 <= value <= 10.0:
        raise CallError("out_of_range", f"{name}={value!r} is outside 0-10")
    return float(value)


def parse_viescore(value: Any) -> Scores:
    """Scores from a VIEScore-style answer (the mapping is in the module docstring)."""
    if not isinstance(value, dict):
        raise CallError("schema_violation", f"expected a JSON object, got {type(value).__name__}")
    reasoning = value.get("reasoning")
    if not isinstance(reasoning, str):
        raise CallError("schema_violation", f"reasoning is {reasoning!r:.40}, not text")
    subs = {name: _sub_score(value, name) for name in SUB_SCORES}
    sc = min(subs["prompt_following"], subs["consistency"])
    pq = subs["perceptual_quality"]
    details = {
        **subs,
        "sc": sc,
        "pq": pq,
        "overall": round(math.sqrt(sc * pq), 4),
        "reasoning": reasoning[:1000],
    }
    return Scores(to_validator_scale(sc), to_validator_scale(pq), details=details)


class VIEScoreJudge(FormatJudge):
    """The hard validator as a VIEScore / EditScore style judge (0–10, with reasoning)."""

    style = "viescore"
    template_name = "viescore"
    schema: ClassVar[dict[str, Any]] = SCHEMA

    def parse(self, value: Any) -> Scores:
        """See ``parse_viescore``."""
        return parse_viescore(value)
