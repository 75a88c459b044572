"""Plumbing-check backends: a template prompt writer, an accept-all judge, a template
inverter. They check that a chain of real generators runs end to end; they measure
nothing.

Tiny random diffusers models draw noise, which no judge can judge meaningfully (the
synthetic judge reads the synthetic world's scenes; a VLM would reject all of it). A run
config that wants every stage exercised with such models (``configs/tiny-diffusers.yaml``)
names these: the judge passes every source and candidate, with hard-validator scores in
[4.7, 5] drawn from the edited image's bytes so the argmax selection still has something
to choose. Never use them to mine a dataset: every triplet they pass is unjudged.
"""

from __future__ import annotations

import hashlib

from PIL import Image

from nhr.backends.base import (
    Backend,
    Caption,
    CaptionRequest,
    InstructionDraft,
    InstructionSet,
    PrefilterAnswer,
    PromptDraft,
    PromptRequest,
    Scores,
    TextAnswer,
    YesNo,
)
from nhr.seeds import rng_for

VERSION = "plumbing-v1"
SUBJECTS = ("a red cube", "a wooden chair", "a tabby cat", "a glass vase", "a blue bicycle")
PLACES = ("on a beach", "in a kitchen", "in a forest", "on a city street", "in a desert")
STYLES = ("photo", "watercolour", "3d render")
EDITS = (
    ("add a small yellow ball next to {s}", "add"),
    ("remove {s}", "remove"),
    ("make {s} green", "color"),
    ("replace {s} with a teapot", "replace"),
    ("turn the scene into night", "background"),
)


class PlumbingPrompter(Backend):
    """A ``PromptWriter`` from fixed templates, deterministic in the request's seed."""

    model_id = "plumbing-templates"
    version = VERSION

    def write(self, requests: list[PromptRequest]) -> list[PromptDraft]:
        """One prompt and k instructions (cycling through the edit templates) per request."""
        out = []
        for req in requests:
            rng = rng_for(req.seed, "plumbing-prompt")
            subject = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
            place = PLACES[int(rng.integers(len(PLACES)))]
            style = req.style or STYLES[int(rng.integers(len(STYLES)))]
            start = int(rng.integers(len(EDITS)))
            edits = [EDITS[(start + j) % len(EDITS)] for j in range(req.k)]
            out.append(
                PromptDraft(
                    prompt_id=req.prompt_id,
                    text=f"a {style} of {subject} {place}",
                    style=style,
                    topic=subject,
                    instructions=tuple(
                        InstructionDraft(text.format(s=subject.split(" ", 1)[1]), kind)
                        for text, kind in edits
                    ),
                )
            )
        return out


def _unit(image: Image.Image) -> float:
    """A number in [0, 1) drawn from an image's pixels (stable across runs)."""
    digest = hashlib.sha256(image.convert("RGB").tobytes()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32


class AcceptAllJudge(Backend):
    """A ``Judge`` that passes everything: plumbing check only (see the module note)."""

    judge_id = "plumbing-accept-all"
    prompt_version = VERSION

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Yes for every image."""
        return [YesNo(True, "plumbing check: accepts every image") for _ in images]

    def prefilter(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[PrefilterAnswer]:
        """Top scores, no unwanted change, aesthetic: for every candidate."""
        return [
            PrefilterAnswer(Scores(5.0, 5.0), unwanted_changes=False, aesthetic_ok=True)
            for _ in edits
        ]

    def score(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[Scores]:
        """Scores in [4.7, 5] from the edit's pixels (so argmax has a choice to make)."""
        return [
            Scores(round(4.7 + 0.3 * _unit(e), 3), round(4.7 + 0.3 * (1 - _unit(e)), 3))
            for e in edits
        ]


class PlumbingInverter(Backend):
    """An ``InstructionWriter`` from templates (never uses revert/undo/restore/back)."""

    model_id = "plumbing-templates"
    version = VERSION

    def invert(self, instructions: list[str], prompts: list[str]) -> list[TextAnswer]:
        """'make it look like: <prompt>' for every instruction."""
        return [TextAnswer(f"make the image look like this: {p}") for p in prompts]

    def compose(
        self, first_inverses: list[str], seconds: list[str], prompts: list[str]
    ) -> list[TextAnswer]:
        """The two instructions joined."""
        return [TextAnswer(f"{a}, then {b}") for a, b in zip(first_inverses, seconds, strict=True)]


class PlumbingCaptioner(Backend):
    """A ``Captioner`` that names a photo by its size and mean colour (no model)."""

    model_id = "plumbing-captioner"
    version = VERSION

    def caption(self, images: list[Image.Image]) -> list[Caption]:
        """'a photo, W×H, mostly reddish' per image."""
        out = []
        for im in images:
            r, g, b = (int(v) for v in im.convert("RGB").resize((1, 1)).getpixel((0, 0)))
            tone = ("reddish", "greenish", "bluish")[max(range(3), key=(r, g, b).__getitem__)]
            out.append(Caption(f"a photo, {im.width}x{im.height}, mostly {tone}", "photo", tone))
        return out


class PlumbingCaptionWriter(Backend):
    """A ``CaptionInstructionWriter`` cycling through the edit templates."""

    model_id = "plumbing-caption-writer"
    version = VERSION

    def instructions(self, requests: list[CaptionRequest]) -> list[InstructionSet]:
        """k template instructions about 'the main object' per request."""
        out = []
        for req in requests:
            start = int(rng_for(req.seed, "plumbing-caption").integers(len(EDITS)))
            edits = [EDITS[(start + j) % len(EDITS)] for j in range(req.k)]
            out.append(
                InstructionSet(
                    tuple(InstructionDraft(t.format(s="the main object"), k) for t, k in edits)
                )
            )
        return out
