"""The synthetic world's template writer of inverse and composed instructions.

It implements the same ``InstructionWriter`` protocol as an LLM writer: the inverse of an
instruction is written from the instruction and the source's T2I prompt (so the source's
attributes are kept: "remove the red circle" → "add a large red circle on the left"),
and a composed instruction chains the first edit's inverse with the second edit. The
phrasing varies by a hash of the input, like a sampled LLM at temperature 0 would not,
but a template can afford to.
"""

from __future__ import annotations

import hashlib

from nhr.backends.base import Backend, TextAnswer

from .language import (
    PHRASINGS,
    invert_instruction,
    parse_instruction,
    write_edit,
)


def _variant(*parts: str) -> int:
    """A stable small integer from the text, to pick phrasings."""
    return int.from_bytes(hashlib.sha256("\n".join(parts).encode()).digest()[:4], "little")


class SyntheticInverter(Backend):
    """Template inverse/compose writer over the world's grammar."""

    model_id = "synthetic-inverter"
    version = "synthetic-inverter-v1"

    def invert(self, instructions: list[str], prompts: list[str]) -> list[TextAnswer]:
        """Inverse of each instruction given its source's prompt; unparseable or
        un-invertible ones come back with ``error`` set (``no_inverse: ...``)."""
        out = []
        for text, prompt in zip(instructions, prompts, strict=True):
            try:
                out.append(TextAnswer(invert_instruction(text, prompt, _variant(text, prompt))))
            except (ValueError, AssertionError) as err:
                out.append(TextAnswer("", error=f"no_inverse: {err}"))
        return out

    def compose(
        self, first_inverses: list[str], seconds: list[str], prompts: list[str]
    ) -> list[TextAnswer]:
        """One instruction doing the first edit's inverse, then the second edit."""
        out = []
        for inverse, second, prompt in zip(first_inverses, seconds, prompts, strict=True):
            try:
                edits = parse_instruction(inverse).edits + parse_instruction(second).edits
            except ValueError as err:
                out.append(TextAnswer("", error=f"unparseable: {err}"))
                continue
            v = _variant(inverse, second, prompt)
            texts = [write_edit(e, v + i, v) for i, e in enumerate(edits)]
            joiners = PHRASINGS["compound"]
            if len(texts) == 2:
                text = joiners[v % len(joiners)].format(a=texts[0], b=texts[1])
            else:
                text = ", then ".join(texts[:-1]) + " and then " + texts[-1]
            out.append(TextAnswer(text))
        return out
