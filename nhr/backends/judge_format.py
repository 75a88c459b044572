"""A hard validator behind a remote model that answers in its own judge format.

Open edit judges (EditScore, ImgEdit-Judge, VIEScore prompts on any VLM) do not answer
in the paper's ``{"InstructionAdherence", "ImageAesthetic"}`` schema: each has its own
scale and layout. A ``FormatJudge`` sends a versioned prompt of ``nhr/prompts/`` through
the client layer (cache, limits, retries), parses the answer with its format's parser,
maps it onto the validator's 1–5 scale, and keeps the raw answer in the verdict's
``details``. An answer the parser refuses is an error verdict (never a pass), with the
raw answer kept too. These judges serve the ``validator`` role only (stages 7 and 9).
A protocol of more than one call (VIEScore's SC and PQ) overrides ``score``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from PIL import Image

from nhr.backends.api_client import CallError, ModelRequest, RemoteClient, Usage
from nhr.backends.api_roles import PromptTemplate, image_part
from nhr.backends.base import PrefilterAnswer, Scores, YesNo, check_triplet_lengths
from nhr.errors import BackendError

#: The longest raw answer kept in a verdict's details, in characters.
RAW_MAX_CHARS = 4000


class FormatJudge:
    """Scores (source, edit, instruction) with a judge-format prompt; subclasses give the
    prompt name, the response schema (or ``free_text``) and ``parse``."""

    style = "format"
    template_name = ""
    template_version = 1
    schema: ClassVar[dict[str, Any]] = {}
    free_text = False

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        image_max_side: int = 1024,
        max_output_tokens: int = 512,
    ) -> None:
        self.client = client
        self.model = model
        self.image_max_side = image_max_side
        self.max_output_tokens = max_output_tokens
        self.template = PromptTemplate.load(self.template_name, self.template_version)
        self.judge_id = f"{client.transport.name}:{model}:{self.style}"
        self.prompt_version = self.template.version
        self._usage = Usage()

    def parse(self, value: Any) -> Scores:
        """The validator's scores from one answer; raises ``CallError`` when untrustworthy."""
        raise NotImplementedError

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this judge."""
        return self._usage.snapshot()

    def _request(self, source: Image.Image, edit: Image.Image, instruction: str) -> ModelRequest:
        images = {
            "source": image_part(source, self.image_max_side),
            "edited": image_part(edit, self.image_max_side),
        }
        system, parts = self.template.render({"instruction": instruction}, images)
        return ModelRequest(
            self.model,
            self.prompt_version,
            system,
            parts,
            self.schema,
            0.0,
            self.max_output_tokens,
            self.free_text,
        )

    def _capturing(self, raws: list[str | None], i: int) -> Callable[[Any], Scores]:
        """A parser that remembers the last answer it saw (kept even when it fails)."""

        def parse(value: Any) -> Scores:
            raws[i] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            return self.parse(value)

        return parse

    def score(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[Scores]:
        """Adherence and aesthetics on 1–5, with the raw answer in ``details["raw"]``."""
        check_triplet_lengths(sources, edits, instructions)
        reqs = [
            self._request(s, e, t) for s, e, t in zip(sources, edits, instructions, strict=True)
        ]
        raws: list[str | None] = [None] * len(reqs)
        parsers = [self._capturing(raws, i) for i in range(len(reqs))]
        out = self.client.ask_many(reqs, parsers, self._usage) if reqs else []
        result = []
        for raw, answer in zip(raws, out, strict=True):
            kept = {"judge_style": self.style, "raw": (raw or "")[:RAW_MAX_CHARS]}
            if isinstance(answer, CallError):
                result.append(Scores(0.0, 0.0, error=str(answer), details=kept))
            else:
                result.append(
                    Scores(answer.adherence, answer.aesthetic, details={**kept, **answer.details})
                )
        return result

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Not a gate: judge formats serve the hard validator only."""
        raise BackendError(
            f"{self.judge_id} is a hard-validator format", "use it as VALIDATOR only"
        )

    def prefilter(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[PrefilterAnswer]:
        """Not a pre-filter: judge formats serve the hard validator only."""
        raise BackendError(
            f"{self.judge_id} is a hard-validator format", "use it as VALIDATOR only"
        )


def build_format_judge(
    ctx: Any, transport: str, cls: type[FormatJudge], model: str = "", **options: Any
) -> Any:
    """A judge format on a remote backend (``gemini`` or ``openai``), sharing the backend's
    client; ``model`` overrides ``VALIDATOR_MODEL``; ``options`` go to the class."""
    from nhr.backends.api_roles import make_client, model_for

    client = ctx.shared(
        f"api-client:{transport}", lambda: make_client(ctx.cfg, ctx.run_dir, transport)
    )
    return cls(
        client,
        model or model_for(ctx.cfg, transport, "validator"),
        ctx.cfg.api.api_image_max_side,
        ctx.cfg.api.api_max_output_tokens,
        **options,
    )
