"""The uses of remote models: prompt writer, judges (gate, pre-filter, hard validator) and
the inverse/composed instruction writer, on top of the client layer.

Each use renders a versioned prompt file of ``nhr/prompts/`` (``validator_v1.txt`` is
version ``validator-v1``; the version goes on every row the use produces). A prompt
file has a ``[system]`` part — the model's own instructions, fixed — and a ``[user]``
part in which ``$name`` is replaced by the JSON-quoted value (the instruction or prompt
under judgement is data, never part of the instructions) and a line ``{{image:name}}``
by an image. Answers are parsed strictly: a judge returns an answer with ``error`` set
(``"kind: detail"``) for anything it cannot trust, and never raises on a bad answer.
"""

from __future__ import annotations

import io
import json
import math
import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nhr.backends.api_client import (
    CallError,
    ClientSettings,
    ImagePart,
    ModelRequest,
    PriceTable,
    RemoteClient,
    Usage,
    open_request_cache,
)
from nhr.backends.base import (
    Backend,
    InstructionDraft,
    PrefilterAnswer,
    PromptDraft,
    PromptRequest,
    Scores,
    TextAnswer,
    YesNo,
)
from nhr.config import PipelineConfig
from nhr.errors import BackendError

#: The words an inverse or composed instruction must not use (the paper's rule).
BANNED = re.compile(r"\b(revert\w*|undo\w*|undid|restor\w*|back)\b", re.IGNORECASE)
_IMAGE_LINE = re.compile(r"^\{\{image:(\w+)\}\}$")


# ---------------------------------------------------------------- prompt files
@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file: fixed system text and a user template."""

    name: str
    version: str
    system: str
    user: str

    @classmethod
    def load(cls, name: str, version: int = 1) -> PromptTemplate:
        """Read ``nhr/prompts/<name>_v<version>.txt``."""
        return _load_template(name, version)

    def render(
        self, values: dict[str, str], images: dict[str, ImagePart] | None = None
    ) -> tuple[str, tuple[str | ImagePart, ...]]:
        """(system text, user parts): values JSON-quoted, image lines replaced by images."""
        quoted = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
        parts: list[str | ImagePart] = []
        lines: list[str] = []
        for line in self.user.splitlines():
            match = _IMAGE_LINE.match(line.strip())
            if match:
                if lines:
                    parts.append(string.Template("\n".join(lines)).substitute(quoted))
                    lines = []
                parts.append((images or {})[match.group(1)])
            else:
                lines.append(line)
        if lines:
            parts.append(string.Template("\n".join(lines)).substitute(quoted))
        return self.system, tuple(parts)


@cache
def _load_template(name: str, version: int) -> PromptTemplate:
    path = resources.files("nhr").joinpath(f"prompts/{name}_v{version}.txt")
    text = path.read_text(encoding="utf-8")
    if "[system]" not in text or "[user]" not in text:
        raise BackendError(
            f"prompt file {name}_v{version}.txt has no [system]/[user] parts", "restore it from git"
        )
    system, user = text.split("[user]", 1)
    return PromptTemplate(
        name, f"{name}-v{version}", system.replace("[system]", "", 1).strip(), user.strip("\n")
    )


def render_request(
    model: str,
    template: PromptTemplate,
    values: dict[str, str],
    schema: dict[str, Any],
    temperature: float,
    max_output_tokens: int,
    images: dict[str, ImagePart] | None = None,
) -> ModelRequest:
    """The request of one rendered prompt file, tagged with the file's version."""
    system, parts = template.render(values, images)
    return ModelRequest(
        model, template.version, system, parts, schema, temperature, max_output_tokens
    )


def image_part(image: Image.Image, max_side: int = 0) -> ImagePart:
    """An image as PNG bytes, downscaled so its long side is at most ``max_side``."""
    image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return ImagePart.from_png(buf.getvalue())


# ---------------------------------------------------------------- answer parsing
def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CallError("schema_violation", f"expected a JSON object, got {type(value).__name__}")
    return value


def _score(obj: dict[str, Any], name: str) -> float:
    """A 1–5 score field: a JSON number (not a string, not a bool) within range."""
    if name not in obj:
        raise CallError("schema_violation", f"missing {name}")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CallError("schema_violation", f"{name} is {value!r}, not a number")
    if not math.isfinite(value) or not 1.0 <= value <= 5.0:
        raise CallError("out_of_range", f"{name}={value!r} is outside 1-5")
    return float(value)


def _yes(obj: dict[str, Any], name: str) -> bool:
    """A yes/no field."""
    value = obj.get(name)
    if isinstance(value, str) and value.strip().lower() in ("yes", "no"):
        return value.strip().lower() == "yes"
    raise CallError("schema_violation", f"{name} is {value!r}, not 'yes' or 'no'")


def _text(obj: dict[str, Any], name: str) -> str:
    """A non-empty string field."""
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise CallError("schema_violation", f"{name} is {value!r}, not a non-empty string")
    return value.strip()


def _instructions(obj: dict[str, Any], k: int) -> list[str]:
    """Exactly k non-empty instruction strings, stripped."""
    texts = obj.get("instructions")
    if not isinstance(texts, list) or len(texts) != k:
        raise CallError("schema_violation", f"expected {k} instructions, got {texts!r:.80}")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise CallError("schema_violation", "an instruction is not a non-empty string")
    return [t.strip() for t in texts]


def parse_scores(value: Any) -> Scores:
    """The hard validator's ``{"InstructionAdherence", "ImageAesthetic"}``."""
    obj = _obj(value)
    return Scores(_score(obj, "InstructionAdherence"), _score(obj, "ImageAesthetic"))


def parse_yes_no(value: Any) -> YesNo:
    """The gate's ``{"answer": "yes" | "no"}``."""
    return YesNo(_yes(_obj(value), "answer"))


def parse_prefilter(value: Any) -> PrefilterAnswer:
    """The pre-filter's scores and two yes/no answers."""
    obj = _obj(value)
    scores = Scores(_score(obj, "InstructionAdherence"), _score(obj, "ImageAesthetic"))
    return PrefilterAnswer(
        scores, _yes(obj, "UnwantedModifications"), _yes(obj, "AestheticallyAcceptable")
    )


def parse_instruction(value: Any) -> str:
    """An inverse or composed instruction; the banned words are refused."""
    text = _text(_obj(value), "instruction")
    banned = BANNED.search(text)
    if banned:
        raise CallError("banned_word", f"{banned.group(0)!r} in {text[:80]!r}")
    return text


def _number(lo: float = 1, hi: float = 5) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi}


YES_NO = {"type": "string", "enum": ["yes", "no"]}
SCHEMAS: dict[str, dict[str, Any]] = {
    "validator": {
        "type": "object",
        "properties": {"InstructionAdherence": _number(), "ImageAesthetic": _number()},
        "required": ["InstructionAdherence", "ImageAesthetic"],
        "propertyOrdering": ["InstructionAdherence", "ImageAesthetic"],
    },
    "gate": {"type": "object", "properties": {"answer": YES_NO}, "required": ["answer"]},
    "prefilter": {
        "type": "object",
        "properties": {
            "InstructionAdherence": _number(),
            "ImageAesthetic": _number(),
            "UnwantedModifications": YES_NO,
            "AestheticallyAcceptable": YES_NO,
        },
        "required": [
            "InstructionAdherence",
            "ImageAesthetic",
            "UnwantedModifications",
            "AestheticallyAcceptable",
        ],
    },
    "instruction": {
        "type": "object",
        "properties": {"instruction": {"type": "string"}},
        "required": ["instruction"],
    },
}


def string_array(k: int) -> dict[str, Any]:
    """The schema of a JSON array of exactly k strings."""
    return {"type": "array", "items": {"type": "string"}, "minItems": k, "maxItems": k}


def prompter_schema(k: int) -> dict[str, Any]:
    """The prompt writer's answer: a prompt and exactly k instructions."""
    return {
        "type": "object",
        "properties": {"prompt": {"type": "string"}, "instructions": string_array(k)},
        "required": ["prompt", "instructions"],
    }


class OnClient(Backend):
    """A backend over a ``RemoteClient``: closing it closes the client, and its share of
    the API limits is the client's."""

    client: RemoteClient

    def close(self) -> None:
        self.client.close()

    def share_limits(self, fraction: float) -> None:
        self.client.share_limits(fraction)


# ---------------------------------------------------------------- the uses
class RemoteUse(OnClient):
    """A remote model used through one prompt file: its client, model, template (whose
    version goes on every row) and cumulative usage."""

    def __init__(self, client: RemoteClient, model: str, template: str) -> None:
        self.client = client
        self.model = model
        self.template = PromptTemplate.load(template)
        self.model_id = f"{client.transport.name}:{model}"
        self.version = self.template.version
        self._usage = Usage()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this use."""
        return self._usage.snapshot()


class RemoteJudge(OnClient):
    """A judge behind a remote model; one object per role so each records its prompt's
    version. Answers it cannot trust come back with ``error`` set, never as a pass."""

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        role: str,
        image_max_side: int = 1024,
        max_output_tokens: int = 256,
        asker: Any = None,
    ) -> None:
        self.client = client
        self.model = model
        self.role = role
        self.asker = asker or client
        self.image_max_side = image_max_side
        self.max_output_tokens = max_output_tokens
        self.templates = {n: PromptTemplate.load(n) for n in ("gate", "prefilter", "validator")}
        main = {"gate_judge": "gate", "prefilter_judge": "prefilter"}.get(role, "validator")
        self.judge_id = f"{client.transport.name}:{model}"
        self.prompt_version = self.templates[main].version
        self._usage = Usage()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this judge."""
        return self._usage.snapshot()

    def _request(
        self, template: str, values: dict[str, str], images: dict[str, ImagePart]
    ) -> ModelRequest:
        return render_request(
            self.model,
            self.templates[template],
            values,
            SCHEMAS[template],
            0.0,
            self.max_output_tokens,
            images,
        )

    def _img(self, image: Image.Image) -> ImagePart:
        return image_part(image, self.image_max_side)

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Yes iff the image accurately depicts the prompt and is realistic and plausible."""
        reqs = [
            self._request("gate", {"prompt": p}, {"image": self._img(im)})
            for im, p in zip(images, prompts, strict=True)
        ]
        out = self.asker.ask_many(reqs, parse_yes_no, self._usage) if reqs else []
        return [YesNo(False, error=str(a)) if isinstance(a, CallError) else a for a in out]

    def _pairs(
        self,
        template: str,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[ModelRequest]:
        return [
            self._request(
                template,
                {"instruction": text},
                {"source": self._img(src), "edited": self._img(edit)},
            )
            for src, edit, text in zip(sources, edits, instructions, strict=True)
        ]

    def prefilter(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[PrefilterAnswer]:
        """Scores, then yes/no on unwanted modifications and on aesthetics."""
        reqs = self._pairs("prefilter", sources, edits, instructions)
        out = self.asker.ask_many(reqs, parse_prefilter, self._usage) if reqs else []
        return [
            PrefilterAnswer(Scores(0.0, 0.0, str(a)), True, False, error=str(a))
            if isinstance(a, CallError)
            else a
            for a in out
        ]

    def score(
        self, sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
    ) -> list[Scores]:
        """Instruction adherence and aesthetics on 1–5, temperature 0, no reasoning."""
        reqs = self._pairs("validator", sources, edits, instructions)
        out = self.asker.ask_many(reqs, parse_scores, self._usage) if reqs else []
        return [Scores(0.0, 0.0, error=str(a)) if isinstance(a, CallError) else a for a in out]


@dataclass(frozen=True)
class Taxonomy:
    """What the prompt writer draws from: topics, styles, edit operations, object counts."""

    topics: tuple[str, ...]
    styles: tuple[str, ...]
    operations: tuple[str, ...]
    max_objects: int = 5
    compound_share: float = 0.15

    def draw(self, req: PromptRequest, attempt: int = 0) -> dict[str, Any]:
        """The constraints of one request, drawn from its seed (and the attempt)."""
        rng = np.random.default_rng([req.seed, attempt])
        ops: list[str] = []
        for _ in range(req.k):
            if len(self.operations) > 1 and rng.random() < self.compound_share:
                a, b = rng.choice(len(self.operations), size=2, replace=False)
                ops.append(f"compound: {self.operations[a]} + {self.operations[b]}")
            else:
                ops.append(str(self.operations[int(rng.integers(len(self.operations)))]))
        return {
            "id": req.prompt_id,
            "seed": req.seed,
            "topic": str(self.topics[int(rng.integers(len(self.topics)))]),
            "style": req.style or str(self.styles[int(rng.integers(len(self.styles)))]),
            "objects": int(rng.integers(1, self.max_objects + 1)),
            "operations": ops,
        }


class RemotePromptWriter(RemoteUse):
    """Writes a T2I prompt and k instructions per request, within the taxonomy."""

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        taxonomy: Taxonomy,
        temperature: float = 1.0,
        max_output_tokens: int = 2048,
        rounds: int = 3,
    ) -> None:
        super().__init__(client, model, "prompter")
        self.taxonomy = taxonomy
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.rounds = rounds

    def write(self, requests: list[PromptRequest]) -> list[PromptDraft]:
        """One draft per request. A request the model fails is drawn again with other
        constraints; one that fails every round stops the stage (rerun to retry)."""
        drafts: dict[int, PromptDraft] = {}
        errors: dict[int, str] = {}
        for attempt in range(self.rounds):
            todo = [i for i in range(len(requests)) if i not in drafts]
            if not todo:
                break
            plans = {i: self.taxonomy.draw(requests[i], attempt) for i in todo}
            reqs = [
                render_request(
                    self.model,
                    self.template,
                    {"request": json.dumps(plans[i])},
                    prompter_schema(requests[i].k),
                    self.temperature,
                    self.max_output_tokens,
                )
                for i in todo
            ]
            parsers = [self._parser(requests[i].k) for i in todo]
            answers = self.client.ask_many(reqs, parsers, self._usage)
            for i, ans in zip(todo, answers, strict=True):
                if isinstance(ans, CallError):
                    errors[i] = str(ans)
                    continue
                prompt, texts = ans
                plan = plans[i]
                drafts[i] = PromptDraft(
                    prompt_id=requests[i].prompt_id,
                    text=prompt,
                    style=plan["style"],
                    topic=plan["topic"],
                    instructions=tuple(
                        InstructionDraft(t, "compound" if op.startswith("compound") else op)
                        for t, op in zip(texts, plan["operations"], strict=True)
                    ),
                )
        missing = [i for i in range(len(requests)) if i not in drafts]
        if missing:
            i = missing[0]
            raise BackendError(
                f"the prompt writer {self.model_id} gave no usable draft for "
                f"{requests[i].prompt_id} in {self.rounds} rounds ({errors.get(i)})",
                "rerun to retry (finished batches are kept), or change PROMPTER_MODEL",
            )
        return [drafts[i] for i in range(len(requests))]

    @staticmethod
    def _parser(k: int) -> Any:
        def parse(value: Any) -> tuple[str, list[str]]:
            obj = _obj(value)
            prompt = _text(obj, "prompt")
            return prompt, _instructions(obj, k)

        return parse


class RemoteInstructionWriter(OnClient):
    """Writes inverse and composed instructions (the bootstrapping stages)."""

    def __init__(
        self,
        client: RemoteClient,
        model: str,
        temperature: float = 0.0,
        max_output_tokens: int = 256,
    ) -> None:
        self.client = client
        self.model = model
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.invert_template = PromptTemplate.load("invert")
        self.compose_template = PromptTemplate.load("compose")
        self.model_id = f"{client.transport.name}:{model}"
        self.version = f"{self.invert_template.version}+{self.compose_template.version}"
        self._usage = Usage()

    def usage(self) -> dict[str, float]:
        """Cumulative calls, tokens, cost, cache hits and errors of this writer."""
        return self._usage.snapshot()

    def _ask(self, template: PromptTemplate, rows: list[dict[str, str]]) -> list[TextAnswer]:
        reqs = [
            render_request(
                self.model,
                template,
                values,
                SCHEMAS["instruction"],
                self.temperature,
                self.max_output_tokens,
            )
            for values in rows
        ]
        out = self.client.ask_many(reqs, parse_instruction, self._usage) if reqs else []
        return [
            TextAnswer("", error=str(a)) if isinstance(a, CallError) else TextAnswer(a) for a in out
        ]

    def invert(self, instructions: list[str], prompts: list[str]) -> list[TextAnswer]:
        """The instruction that turns each edit's result back into its source."""
        rows = [{"instruction": i, "prompt": p} for i, p in zip(instructions, prompts, strict=True)]
        return self._ask(self.invert_template, rows)

    def compose(
        self, first_inverses: list[str], seconds: list[str], prompts: list[str]
    ) -> list[TextAnswer]:
        """One instruction from the first edit's result to the second's."""
        rows = [
            {"first_inverse": a, "second": b, "prompt": p}
            for a, b, p in zip(first_inverses, seconds, prompts, strict=True)
        ]
        return self._ask(self.compose_template, rows)


# ---------------------------------------------------------------- building from config
DEFAULT_MODELS = {"gemini": "gemini-2.5-flash", "openai": ""}
ROLE_MODEL = {
    "prompter": "prompter_model",
    "gate_judge": "gate_model",
    "prefilter_judge": "prefilter_model",
    "validator": "validator_model",
    "inverter": "inverter_model",
}


def make_client(cfg: PipelineConfig, run_dir: Path | str, backend: str) -> RemoteClient:
    """The client of a backend: its transport, limits, retries, cache and prices."""
    if backend == "gemini":
        from nhr.backends.gemini import GeminiTransport

        transport: Any = GeminiTransport(cfg.gemini.gemini_thinking_budget)
    elif backend == "openai":
        from nhr.backends.openai_compat import OpenAITransport

        transport = OpenAITransport(
            cfg.openai.openai_base_url, cfg.openai.openai_key_env, max(cfg.api.api_concurrency, 8)
        )
    else:
        raise BackendError(f"unknown remote backend {backend!r}", "use gemini or openai")
    settings = ClientSettings(
        concurrency=cfg.api.api_concurrency,
        rpm=cfg.api.api_rpm,
        tpm=cfg.api.api_tpm,
        timeout=cfg.api.api_timeout_seconds,
        attempts=cfg.api.api_attempts,
        backoff_initial=cfg.api.api_backoff_seconds,
        backoff_max=cfg.api.api_backoff_max_seconds,
        content_retries=cfg.api.api_content_retries,
    )
    folder = cfg.api.api_cache_dir or run_dir  # a path, or an object-store URL
    cache = open_request_cache(folder, enabled=cfg.api.api_cache)
    prices = PriceTable.parse(cfg.api.api_prices, cfg.api.api_batch_discount)
    return RemoteClient(transport, settings, cache, prices)


def model_for(cfg: PipelineConfig, backend: str, role: str) -> str:
    """The model id of a role: its ``*_MODEL`` field, else the backend's default."""
    given = cfg.value(ROLE_MODEL[role])
    if given:
        return given
    return cfg.openai.openai_default_model if backend == "openai" else DEFAULT_MODELS[backend]


def build_role(ctx: Any, backend: str, role: str) -> Any:
    """The object of a role on a remote backend (roles share one client per backend)."""
    cfg: PipelineConfig = ctx.cfg
    client = ctx.shared(f"api-client:{backend}", lambda: make_client(cfg, ctx.run_dir, backend))
    model = model_for(cfg, backend, role)
    if role == "prompter":
        taxonomy = Taxonomy(
            cfg.prompt_writer.prompt_topics,
            cfg.prompt_writer.prompt_styles,
            cfg.prompt_writer.prompt_edit_ops,
            cfg.prompt_writer.prompt_max_objects,
            cfg.prompt_writer.prompt_compound_share,
        )
        return RemotePromptWriter(
            client, model, taxonomy, cfg.api.api_writer_temperature, cfg.api.api_max_output_tokens
        )
    if role == "inverter":
        return RemoteInstructionWriter(client, model, 0.0, cfg.api.api_max_output_tokens)
    asker = None
    if role in cfg.gemini.gemini_batch_roles:
        from nhr.backends.gemini import GeminiBatchMode

        asker = GeminiBatchMode(
            client, cfg.gemini.gemini_batch_poll_seconds, cfg.gemini.gemini_batch_max_wait_seconds
        )
    return RemoteJudge(
        client, model, role, cfg.api.api_image_max_side, cfg.api.api_max_output_tokens, asker
    )
