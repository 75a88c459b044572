"""Stage 8, inversion: for each accepted triplet (I0, p, Ie) write p⁻¹ so that
(Ie, p⁻¹, I0) is a triplet whose target is the clean source image.

The writer gets the instruction and the original text-to-image prompt, so the inverse
keeps the attributes the source shows ("remove the red circle" → "add a large red
circle on the left"). Inverses that use a banned word (revert, undo, restore, back) are
refused here whatever the writer returns, and counted as skipped with their reason.
"""

from __future__ import annotations

import re
from typing import Any

from nhr.backends.base import InstructionWriter, TextAnswer
from nhr.records import DraftRow, TripletRow
from nhr.stages.base import Stage

BANNED_WORDS = ("revert", "undo", "restore", "back")
# the words and their inflections ("reverted", "undoes", "restoring", "backwards"), but
# not longer words that merely start with them ("background", "backdrop")
_BANNED = re.compile(
    r"\b(revert\w*|undo\w*|undid|undone|restor\w*|back|backs|backward|backwards)\b",
    re.IGNORECASE,
)

# what an edit type becomes when inverted (the rest map to themselves)
INVERSE_TYPES = {"add": "remove", "remove": "add"}


def banned_word(text: str) -> str | None:
    """The first banned word (or an inflection: 'restored', 'backwards') in ``text``."""
    match = _BANNED.search(text)
    return match.group(0).lower() if match else None


def checked_text(answer: TextAnswer) -> tuple[str, str | None]:
    """(text, skip reason) of a writer's answer: an error, an empty text or a banned word
    makes it a skip, whatever the writer claims."""
    text = answer.text.strip()
    skip = answer.error
    if skip is None and not text:
        skip = "empty: the writer returned no text"
    if skip is None and (word := banned_word(text)):
        skip = f"banned_word: {word}"
    return ("" if skip else text), skip


class InversionStage(Stage[TripletRow, DraftRow]):
    """Writes one inverse draft per mined triplet; a skipped one carries its reason."""

    name = "inversion"
    input_type = TripletRow
    output_type = DraftRow
    backend_fields = ("writer",)

    def __init__(self, writer: InstructionWriter) -> None:
        self.writer = writer

    def own_settings(self) -> dict[str, Any]:
        return {"writer": self.writer.model_id, "version": self.writer.version}

    def process_batch(self, rows: list[TripletRow]) -> list[DraftRow]:
        """Ask the writer for every inverse, then refuse those with banned words."""
        answers = self.writer.invert([r.instruction for r in rows], [r.prompt for r in rows])
        out = []
        for row, ans in zip(rows, answers, strict=True):
            text, skip = checked_text(ans)
            out.append(
                DraftRow(
                    triplet_id=f"i-{row.triplet_id}",
                    origin="inverted",
                    parents=(row.triplet_id,),
                    source_image=row.edited_image,
                    edited_image=row.source_image,
                    instruction=text,
                    skip_reason=skip,
                    writer_id=self.writer.model_id,
                    writer_version=self.writer.version,
                )
            )
        return out
