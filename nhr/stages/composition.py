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

# sources whose ordered pairs are enumerated at once (their pair arrays are what is held)
PAIR_SOURCES = 4096


def _pairs(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (a, b) of rows within each group (rows ``starts[g]`` to
    ``starts[g] + sizes[g]``), a-major, a == b included."""
    group_of = np.repeat(np.arange(len(starts)), sizes)
    rows = np.repeat(starts, sizes) + (
        np.arange(len(group_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    )
    a = np.repeat(rows, sizes[group_of])
    reps = sizes[group_of]
    offset = np.arange(len(a)) - np.repeat(np.cumsum(reps) - reps, reps)
    b = starts[np.repeat(group_of, reps)] + offset
    return a, b


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
    # the forwards' order by (source, id), as positions: only the keys are sorted
    idx = pc.sort_indices(
        forwards.select(["source_id", "triplet_id"]),
        [("source_id", "ascending"), ("triplet_id", "ascending")],
    ).to_numpy()
    ids = flat(forwards.column("triplet_id")).take(pa.array(idx, pa.int64()))
    inverse_of = positions(ids, pc.list_element(inverses.column("parents"), 0))
    del ids
    sources = pa.table({"s": flat(forwards.column("source_id")).take(pa.array(idx, pa.int64()))})
    starts = group_starts(sources, ["s"])
    names = flat(sources.column("s")).take(pa.array(starts, pa.int64())).to_pylist()
    del sources
    # equal images have equal codes: pairs compare integers, not two strings per pair
    codes = pc.dictionary_encode(flat(forwards.column("edited_image"))).indices
    codes = codes.to_numpy(zero_copy_only=False)[idx]
    sizes = np.diff(np.append(starts, len(idx)))
    picked_a, picked_b = [], []
    g = 0
    while g < len(starts):  # a few thousand sources at a time: their pairs, then picks
        end = min(len(starts), g + PAIR_SOURCES)
        a, b = _pairs(starts[g:end], sizes[g:end])
        ok = (a != b) & (inverse_of[a] >= 0) & (codes[a] != codes[b])
        a, b = a[ok], b[ok]
        pair_group = np.searchsorted(starts, a, side="right") - 1
        counts = np.bincount(pair_group - g, minlength=end - g)
        first_pair = np.cumsum(counts) - counts
        for k, n in enumerate(counts):
            if n:
                order = rng_for(seed, names[g + k], "compose").permutation(int(n))
                pick = first_pair[k] + order[:max_pairs_per_source]
                picked_a.append(a[pick])
                picked_b.append(b[pick])
        g = end
    a = np.concatenate(picked_a).astype(np.int64) if picked_a else np.zeros(0, np.int64)
    b = np.concatenate(picked_b).astype(np.int64) if picked_b else np.zeros(0, np.int64)
    first, second = take(forwards, idx[a]), take(forwards, idx[b])
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
