"""Stage 10, composition: two accepted edits of one source give (Ie1, p′, Ie2), where p′
is one natural instruction written from p1⁻¹ and p2.

Pairs are ordered (Ie1→Ie2 and Ie2→Ie1 are different triplets), drawn in a seeded order
and capped per source, so a source with many accepted edits does not dominate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nhr.backends.base import InstructionWriter
from nhr.records import ComposeJob, DraftRow
from nhr.seeds import rng_for
from nhr.stages.base import Stage
from nhr.stages.inversion import checked_text
from nhr.tables import flat, group_starts, positions, take, typed_table


def plan_compose_jobs(
    forwards: pa.Table,
    inverses: pa.Table,
    max_pairs_per_source: int,
    seed: int,
) -> pa.Table:
    """Ordered pairs of consistent forward triplets of the same source, capped per source
    (a ``ComposeJob`` table).

    ``inverses`` holds the accepted inverse triplets (``parents[0]`` is the forward,
    ``instruction`` the inverse instruction); only forwards with one can be the first
    edit of a pair. Pairs whose two edited images are identical are skipped (they would
    be a no-op instruction). Per source, the pairs (a, b) in order of a's then b's id are
    drawn in the order of a permutation seeded by (seed, source id).
    """
    order = forwards.select(["source_id", "triplet_id", "edited_image", "prompt", "instruction"])
    order = order.sort_by([("source_id", "ascending"), ("triplet_id", "ascending")])
    inverse_of = positions(
        order.column("triplet_id"), pc.list_element(inverses.column("parents"), 0)
    )
    starts = group_starts(order, ["source_id"])
    sizes = np.diff(np.append(starts, order.num_rows))
    # every ordered pair (a, b) within a source, a-major: a repeats |group| times
    group_of = np.repeat(np.arange(len(starts)), sizes)
    a = np.repeat(np.arange(order.num_rows), sizes[group_of])
    offset = np.arange(len(a)) - np.repeat(
        np.cumsum(sizes[group_of]) - sizes[group_of], sizes[group_of]
    )
    b = starts[group_of[a]] + offset
    images = flat(order.column("edited_image"))
    ok = (a != b) & (inverse_of[a] >= 0)
    if len(a):
        ok &= pc.not_equal(images.take(pa.array(a)), images.take(pa.array(b))).to_numpy(
            zero_copy_only=False
        )
    a, b = a[ok], b[ok]
    pair_group = group_of[a]
    counts = np.bincount(pair_group, minlength=len(starts))
    first_pair = np.cumsum(counts) - counts
    sources = flat(order.column("source_id")).take(pa.array(starts, pa.int64())).to_pylist()
    chosen = [
        first_pair[g]
        + rng_for(seed, sources[g], "compose").permutation(int(n))[:max_pairs_per_source]
        for g, n in enumerate(counts)
        if n
    ]
    pick = np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)
    a, b = a[pick], b[pick]
    first, second = take(order, a), take(order, b)
    texts = take(inverses, inverse_of[a]).column("instruction")
    job_id = pc.binary_join_element_wise(
        "c-", first.column("triplet_id"), "--", second.column("triplet_id"), ""
    )
    return typed_table(
        {
            "job_id": job_id,
            "first": first.column("triplet_id"),
            "second": second.column("triplet_id"),
            "first_image": first.column("edited_image"),
            "second_image": second.column("edited_image"),
            "first_inverse": texts,
            "second_instruction": second.column("instruction"),
            "prompt": first.column("prompt"),
        },
        ComposeJob.schema(),
    )


class CompositionStage(Stage[ComposeJob, DraftRow]):
    """Writes one composed draft per job; a skipped one carries its reason."""

    name = "composition"
    input_type = ComposeJob
    output_type = DraftRow
    backend_fields = ("writer",)

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
