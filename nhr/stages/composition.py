"""Stage 10, composition: two accepted edits of one source give (Ie1, p′, Ie2), where p′
is one natural instruction written from p1⁻¹ and p2.

Pairs are ordered (Ie1→Ie2 and Ie2→Ie1 are different triplets), drawn in a seeded order
and capped per source, so a source with many accepted edits does not dominate.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from nhr.backends.base import InstructionWriter
from nhr.records import ComposeJob, DraftRow, TripletRow
from nhr.seeds import rng_for
from nhr.stages.base import Stage
from nhr.stages.inversion import checked_text


def plan_compose_jobs(
    forwards: list[TripletRow],
    inverses: dict[str, str],
    max_pairs_per_source: int,
    seed: int,
) -> list[ComposeJob]:
    """Ordered pairs of consistent forward triplets of the same source, capped per source.

    ``inverses`` maps a forward triplet id to its (accepted) inverse instruction; only
    forwards with one can be the first edit of a pair. Pairs whose two edited images are
    identical are skipped (they would be a no-op instruction).
    """
    by_source: dict[str, list[TripletRow]] = defaultdict(list)
    for t in forwards:
        by_source[t.source_id].append(t)
    jobs = []
    for source_id in sorted(by_source):
        group = sorted(by_source[source_id], key=lambda t: t.triplet_id)
        pairs = [
            (a, b)
            for a in group
            for b in group
            if a.triplet_id != b.triplet_id
            and a.triplet_id in inverses
            and a.edited_image != b.edited_image
        ]
        order = rng_for(seed, source_id, "compose").permutation(len(pairs))
        for i in order[:max_pairs_per_source]:
            a, b = pairs[int(i)]
            jobs.append(
                ComposeJob(
                    job_id=f"c-{a.triplet_id}--{b.triplet_id}",
                    first=a.triplet_id,
                    second=b.triplet_id,
                    first_image=a.edited_image,
                    second_image=b.edited_image,
                    first_inverse=inverses[a.triplet_id],
                    second_instruction=b.instruction,
                    prompt=a.prompt,
                )
            )
    return jobs


class CompositionStage(Stage[ComposeJob, DraftRow]):
    """Writes one composed draft per job; a skipped one carries its reason."""

    name = "composition"
    input_type = ComposeJob
    output_type = DraftRow

    def __init__(self, writer: InstructionWriter) -> None:
        self.writer = writer

    def own_settings(self) -> dict[str, Any]:
        return {"writer": self.writer.model_id, "version": self.writer.version}

    def process_batch(self, rows: list[ComposeJob]) -> list[DraftRow]:
        """Ask the writer for each composed instruction."""
        answers = self.writer.compose(
            [r.first_inverse for r in rows],
            [r.second_instruction for r in rows],
            [r.prompt for r in rows],
        )
        out = []
        for job, ans in zip(rows, answers, strict=True):
            text, skip = checked_text(ans)
            out.append(
                DraftRow(
                    triplet_id=job.job_id,
                    origin="composed",
                    parents=(job.first, job.second),
                    source_image=job.first_image,
                    edited_image=job.second_image,
                    instruction=text,
                    skip_reason=skip,
                    writer_id=self.writer.model_id,
                    writer_version=self.writer.version,
                )
            )
        return out
