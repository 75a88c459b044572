"""Stage 4: edits, and the paper's budget-aware scheduler over the N×k×M job grid."""

from __future__ import annotations

import time
from typing import Any

from nhr.backends.base import Editor
from nhr.records import CandidateRow, EditJob, PromptRow, SourceRow
from nhr.seeds import derive_seed, rng_for
from nhr.stages.base import Stage
from nhr.store import BlobStore


def plan_edit_jobs(
    sources: list[SourceRow],
    prompts: dict[str, PromptRow],
    m_seeds: int,
    steps_range: tuple[int, int],
    guidances: tuple[float, ...],
    seed: int,
    max_jobs: int = 0,
) -> list[EditJob]:
    """The full grid of (source, instruction, seed) jobs in a seeded random order.

    Drawing jobs from the front of this list is drawing uniformly from the grid, as the
    paper's scheduler does, so a budget cap anywhere still gives an unbiased sample.
    ``max_jobs`` > 0 keeps only that many. Steps and guidance are drawn per job.
    """
    jobs = []
    for src in sources:
        prompt = prompts[src.prompt_id]
        for j, (text, edit_type) in enumerate(
            zip(prompt.instructions, prompt.edit_types, strict=True)
        ):
            for m in range(m_seeds):
                cid = f"{src.source_id}-i{j}-e{m}"
                rng = rng_for(seed, cid, "job")
                jobs.append(
                    EditJob(
                        candidate_id=cid,
                        source_id=src.source_id,
                        prompt_id=src.prompt_id,
                        instruction_id=f"{src.prompt_id}-i{j}",
                        instruction=text,
                        edit_type=edit_type,
                        style=src.style,
                        source_image=src.image,
                        width=src.width,
                        height=src.height,
                        seed=derive_seed(seed, cid, "edit"),
                        steps=int(rng.integers(steps_range[0], steps_range[1] + 1)),
                        guidance=float(guidances[int(rng.integers(len(guidances)))]),
                    )
                )
    order = rng_for(seed, "edit-order").permutation(len(jobs))
    jobs = [jobs[i] for i in order]
    return jobs[:max_jobs] if max_jobs else jobs


class EditStage(Stage[EditJob, CandidateRow]):
    """Runs the editor on each job; the edited image must come back at the source's size."""

    name = "candidates"
    input_type = EditJob
    output_type = CandidateRow

    def __init__(self, editor: Editor, blobs: BlobStore) -> None:
        self.editor = editor
        self.blobs = blobs

    def own_settings(self) -> dict[str, Any]:
        return {"editor": self.editor.model_id}

    def setup(self) -> None:
        """Load the editor before the first batch, so load time is not billed to a job."""
        load = getattr(self.editor, "load", None)
        if callable(load):
            load()

    def process_batch(self, rows: list[EditJob]) -> list[CandidateRow]:
        """Edit the batch, one editor call per guidance value; record seconds per job."""
        sources = [self.blobs.get(r.source_image) for r in rows]
        images: list[Any] = [None] * len(rows)
        seconds = [0.0] * len(rows)
        for guidance in sorted({r.guidance for r in rows}):
            idx = [i for i, r in enumerate(rows) if r.guidance == guidance]
            t0 = time.perf_counter()
            edited = self.editor.edit(
                [sources[i] for i in idx],
                [rows[i].instruction for i in idx],
                [rows[i].seed for i in idx],
                [rows[i].steps for i in idx],
                guidance,
            )
            per_job = (time.perf_counter() - t0) / len(idx)
            for i, image in zip(idx, edited, strict=True):
                images[i] = image
                seconds[i] = per_job
        out = []
        for job, src, image, secs in zip(rows, sources, images, seconds, strict=True):
            if image.size != src.size:
                raise ValueError(
                    f"{self.editor.model_id} returned {image.size} for a {src.size} source"
                )
            out.append(
                CandidateRow(
                    **job.to_row(),
                    image=self.blobs.put(image),
                    model_id=self.editor.model_id,
                    seconds=secs,
                )
            )
        return out
