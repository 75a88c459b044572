"""How ImgEdit-Judge answers, for the fake server.

Source: ImgEdit (PKU-YuanGroup/ImgEdit, ``Benchmark/Basic/prompts.json``: per edit type
three criteria rated 1–5 and the response format ``Brief reasoning: ...`` then one
``<criterion>: <n>`` line per criterion; ``basic_bench_readme.md``: answers such as
``"Brief reasoning: No fur change; wrong subject ...\\nPrompt Compliance: 1\\nVisual
Seamlessness: 4\\nPhysical & Detail Fidelity: 4"``; ImgEdit-Judge is Qwen2.5-VL tuned to
write the same). The labels follow the prompt's own criteria; the scores are integers,
deterministic in the request text. Content faults (passing-looking): ``malformed`` drops
the third line, ``schema`` writes words, ``range`` gives 7, ``ambiguous`` adds a fourth
score line; ``safety`` / ``truncated`` carry fives with a bad finish reason.
"""

from __future__ import annotations

import hashlib
import re

#: The labels ImgEdit's general prompts (add, remove, replace) use.
LABELS = ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity")
_LABEL = re.compile(r"^(.+): A number from 1 to 5\.$", re.MULTILINE)


def scores(text: str) -> list[int]:
    """Three 1–5 scores, the second and third no higher than the first (as asked)."""
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    first = [5, 5, 4, 4, 3, 2, 1, 5][h % 8]
    return [first, min(first, [5, 4, 5, 3][(h >> 3) % 4]), min(first, [5, 5, 4, 3][(h >> 5) % 4])]


def answer(text: str, fault: str | None = None) -> str:
    """ImgEdit-Judge's answer to a request whose prompt is ImgEdit's."""
    labels = _LABEL.findall(text) or list(LABELS)
    values: list[object] = list(scores(text))
    if fault == "schema":
        values = ["five", "five", "five"]
    elif fault == "range":
        values = [7, 7, 7]
    elif fault in ("safety", "truncated", "malformed", "ambiguous"):
        values = [5, 5, 5]
    lines = ["Brief reasoning: the requested change is made; the scene stays coherent."]
    lines += [f"{label}: {v}" for label, v in zip(labels, values, strict=False)]
    if fault == "malformed":
        lines = lines[:-1]
    if fault == "ambiguous":
        lines.append(f"{labels[0]}: 2")
    return "\n".join(lines)
