"""Stage 1: a prompt writer drafts a text-to-image prompt and k edit instructions."""

from __future__ import annotations

from typing import Any

from nhr.backends.base import PromptRequest, PromptWriter
from nhr.records import PromptJob, PromptRow
from nhr.seeds import derive_seed
from nhr.stages.base import Stage


def plan_prompt_jobs(n_prompts: int, seed: int) -> list[PromptJob]:
    """The run's prompt requests: ids ``p000000``…, each with a seed derived from the run's."""
    return [
        PromptJob(prompt_id=f"p{i:06d}", seed=derive_seed(seed, "prompt", i), style="")
        for i in range(n_prompts)
    ]


class PromptStage(Stage[PromptJob, PromptRow]):
    """Writes one ``PromptRow`` (prompt text + k instructions) per ``PromptJob``."""

    name = "prompts"
    input_type = PromptJob
    output_type = PromptRow
    backend_fields = ("writer",)

    def __init__(self, writer: PromptWriter, k: int) -> None:
        self.writer = writer
        self.k = k

    def own_settings(self) -> dict[str, Any]:
        return {"k": self.k, "prompter": self.writer.model_id, "version": self.writer.version}

    def process_batch(self, rows: list[PromptJob]) -> list[PromptRow]:
        """Ask the writer for each job's prompt; instructions are kept in the written order."""
        requests = [PromptRequest(r.prompt_id, r.seed, self.k, r.style or None) for r in rows]
        drafts = self.writer.write(requests)
        out = []
        for job, draft in zip(rows, drafts, strict=True):
            out.append(
                PromptRow(
                    prompt_id=job.prompt_id,
                    seed=job.seed,
                    text=draft.text,
                    style=draft.style,
                    topic=draft.topic,
                    instructions=tuple(i.text for i in draft.instructions),
                    edit_types=tuple(i.edit_type for i in draft.instructions),
                    prompter_id=self.writer.model_id,
                    prompter_version=self.writer.version,
                )
            )
        return out
