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

from nhr.backends.api_client import CallError, ModelRequest, RemoteClient, Usage
from nhr.backends.api_roles import PromptTemplate, _obj, _text, image_part, make_client
from nhr.backends.base import Caption, CaptionRequest, InstructionDraft, InstructionSet

CAPTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "style": {"type": "string"},
        "topic": {"type": "string"},
    },
    "required": ["caption"],
}
OPERATIONS = (
    "add",
    "remove",
    "replace",
    "recolour",
    "material",
    "resize",
    "move",
    "background",
    "style",
)


def instructions_schema(k: int) -> dict[str, Any]:
    """Exactly k instructions and, optionally, their operation words."""
    items = {"type": "array", "items": {"type": "string"}, "minItems": k, "maxItems": k}
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


class RemoteCaptioner:
    """A VLM behind a remote API that captions photos (temperature 0)."""

    def __init__(
        self, client: RemoteClient, model: str, image_max_side: int = 1024, max_tokens: int = 512
    ) -> None:
        self.client = client
        self.model = model
        self.image_max_side = image_max_side
        self.max_tokens = max_tokens
        self.template = PromptTemplate.load("caption")
        self.model_id = f"{client.transport.name}:{model}"
        self.version = self.template.version
        self._usage = Usage()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this captioner."""
        return self._usage.snapshot()

    def caption(self, images: list[Image.Image]) -> list[Caption]:
        """One caption per image; a failed call gives a caption with ``error`` set."""
        reqs = []
        for im in images:
            system, parts = self.template.render({}, {"image": image_part(im, self.image_max_side)})
            reqs.append(
                ModelRequest(
                    self.model, self.version, system, parts, CAPTION_SCHEMA, 0.0, self.max_tokens
                )
            )
        out = self.client.ask_many(reqs, parse_caption, self._usage) if reqs else []
        return [Caption("", error=str(a)) if isinstance(a, CallError) else a for a in out]


class RemoteCaptionWriter:
    """An LLM behind a remote API that writes k instructions from a caption."""

    def __init__(
        self, client: RemoteClient, model: str, temperature: float = 1.0, max_tokens: int = 2048
    ) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.template = PromptTemplate.load("caption_instructions")
        self.model_id = f"{client.transport.name}:{model}"
        self.version = self.template.version
        self._usage = Usage()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this writer."""
        return self._usage.snapshot()

    @staticmethod
    def _parser(k: int) -> Any:
        def parse(value: Any) -> InstructionSet:
            obj = _obj(value)
            texts = obj.get("instructions")
            if not isinstance(texts, list) or len(texts) != k:
                raise CallError("schema_violation", f"expected {k} instructions, got {texts!r:.80}")
            if not all(isinstance(t, str) and t.strip() for t in texts):
                raise CallError("schema_violation", "an instruction is not a non-empty string")
            ops = obj.get("operations")
            ops = ops if isinstance(ops, list) and len(ops) == k else [""] * k
            return InstructionSet(
                tuple(
                    InstructionDraft(t.strip(), o if o in OPERATIONS else "other")
                    for t, o in zip(texts, ops, strict=True)
                )
            )

        return parse

    def instructions(self, requests: list[CaptionRequest]) -> list[InstructionSet]:
        """k instructions per caption; a failed call gives a set with ``error`` set."""
        reqs, parsers = [], []
        for r in requests:
            system, parts = self.template.render({"k": str(r.k), "caption": r.caption})
            reqs.append(
                ModelRequest(
                    self.model,
                    self.version,
                    system,
                    parts,
                    instructions_schema(r.k),
                    self.temperature,
                    self.max_tokens,
                )
            )
            parsers.append(self._parser(r.k))
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
