"""Photo-source uses of remote models: a VLM captioner, and a writer of k instructions
from a caption, on the same client layer (limits, retries, cache, prices) as the other
remote roles (``nhr.backends.api_roles``).

Prompts are the versioned files ``caption_v1.txt`` and ``caption_instructions_v1.txt``;
answers are parsed strictly and a failed call comes back as an error on that photo's
row, never as an exception that stops the stage.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from nhr.backends.api_client import CallError, RemoteClient
from nhr.backends.api_roles import (
    RemoteUse,
    _instructions,
    _obj,
    _text,
    image_part,
    make_client,
    render_request,
    string_array,
)
from nhr.backends.base import Caption, CaptionRequest, InstructionDraft, InstructionSet
from nhr.config import PromptWriterBlock

CAPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "style": {"type": "string"},
        "topic": {"type": "string"},
    },
    "required": ["caption"],
}
#: The operation words an instruction may carry: the prompt writer's default edit operations.
OPERATIONS: tuple[str, ...] = PromptWriterBlock.model_fields["prompt_edit_ops"].default


def instructions_schema(k: int) -> dict[str, Any]:
    """Exactly k instructions and, optionally, their operation words."""
    items = string_array(k)
    return {
        "type": "object",
        "properties": {"instructions": items, "operations": items},
        "required": ["instructions"],
    }


def parse_caption(value: Any) -> Caption:
    """``{"caption", "style"?, "topic"?}`` → a caption."""
    obj = _obj(value)
    style, topic = obj.get("style"), obj.get("topic")
    return Caption(
        _text(obj, "caption"),
        style.strip() if isinstance(style, str) else "",
        topic.strip() if isinstance(topic, str) else "",
    )


class RemoteCaptioner(RemoteUse):
    """A VLM behind a remote API that captions photos (temperature 0)."""

    def __init__(
        self, client: RemoteClient, model: str, image_max_side: int = 1024, max_tokens: int = 512
    ) -> None:
        super().__init__(client, model, "caption")
        self.image_max_side = image_max_side
        self.max_tokens = max_tokens

    def caption(self, images: list[Image.Image]) -> list[Caption]:
        """One caption per image; a failed call gives a caption with ``error`` set."""
        reqs = [
            render_request(
                self.model,
                self.template,
                {},
                CAPTION_SCHEMA,
                0.0,
                self.max_tokens,
                {"image": image_part(im, self.image_max_side)},
            )
            for im in images
        ]
        out = self.client.ask_many(reqs, parse_caption, self._usage) if reqs else []
        return [Caption("", error=str(a)) if isinstance(a, CallError) else a for a in out]


class RemoteCaptionWriter(RemoteUse):
    """An LLM behind a remote API that writes k instructions from a caption."""

    def __init__(
        self, client: RemoteClient, model: str, temperature: float = 1.0, max_tokens: int = 2048
    ) -> None:
        super().__init__(client, model, "caption_instructions")
        self.temperature = temperature
        self.max_tokens = max_tokens

    @staticmethod
    def _parser(k: int) -> Any:
        def parse(value: Any) -> InstructionSet:
            obj = _obj(value)
            texts = _instructions(obj, k)
            ops = obj.get("operations")
            ops = ops if isinstance(ops, list) and len(ops) == k else [""] * k
            return InstructionSet(
                tuple(
                    InstructionDraft(t, o if o in OPERATIONS else "other")
                    for t, o in zip(texts, ops, strict=True)
                )
            )

        return parse

    def instructions(self, requests: list[CaptionRequest]) -> list[InstructionSet]:
        """k instructions per caption; a failed call gives a set with ``error`` set."""
        reqs = [
            render_request(
                self.model,
                self.template,
                {"k": str(r.k), "caption": r.caption},
                instructions_schema(r.k),
                self.temperature,
                self.max_tokens,
            )
            for r in requests
        ]
        parsers = [self._parser(r.k) for r in requests]
        out = self.client.ask_many(reqs, parsers, self._usage) if reqs else []
        return [InstructionSet((), error=str(a)) if isinstance(a, CallError) else a for a in out]


DEFAULT_MODELS = {"gemini": "gemini-2.5-flash"}


def build_photo_role(ctx: Any, backend: str, role: str) -> Any:
    """The captioner or caption writer on a remote backend (one client per backend,
    shared with the other remote roles)."""
    cfg = ctx.cfg
    client = ctx.shared(f"api-client:{backend}", lambda: make_client(cfg, ctx.run_dir, backend))
    given = (
        cfg.captions.captioner_model if role == "captioner" else cfg.captions.caption_writer_model
    )
    model = given or DEFAULT_MODELS.get(backend) or cfg.openai.openai_default_model
    if role == "captioner":
        return RemoteCaptioner(
            client, model, cfg.api.api_image_max_side, cfg.api.api_max_output_tokens
        )
    return RemoteCaptionWriter(
        client, model, cfg.api.api_writer_temperature, cfg.api.api_max_output_tokens
    )
