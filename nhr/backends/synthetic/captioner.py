"""The synthetic world's captioner and caption instruction writer.

The captioner looks at pixels only (the judge's perception, never the truth table) and
writes what it sees as a prompt of the world's grammar: style, background, and each
whole object with its colour, kind, size and cell. So a world render that stands in for
a photo gets a caption the rest of the chain (gate, editor, inversion) understands.
A picture that is not of the world (a real photo) gets an error, not a guess.

The caption instruction writer parses a caption back into a scene and draws k distinct
instructions valid for it, as the prompter does for its own prompts.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from nhr.backends.base import Backend, Caption, CaptionRequest, InstructionSet
from nhr.seeds import derive_seed

from .language import ObjSpec, SceneSpec, parse_prompt, write_prompt
from .perception import Vision
from .prompter import SyntheticPrompter
from .scene import MAX_OBJECTS
from .truth import pixel_hash

MIN_BACKGROUND_SHARE = 0.4  # a world picture is mostly its known background
MIN_SIDE = 16


class SyntheticCaptioner(Backend):
    """Describes world pictures from their pixels, in the world's prompt grammar."""

    model_id = "synthetic-captioner-v1"
    version = "synthetic-caption-v1"

    def __init__(self) -> None:
        self.vision = Vision()

    def caption(self, images: list[Image.Image]) -> list[Caption]:
        """One caption per image; an image it cannot describe gets ``error`` set."""
        return [self._one(im) for im in images]

    def _one(self, image: Image.Image) -> Caption:
        if min(image.size) < MIN_SIDE:
            return Caption("", error=f"too_small: sides under {MIN_SIDE} px")
        try:
            p = self.vision.perceive(image)
        except Exception as err:  # odd pixels never stop a run: they are answered
            return Caption("", error=f"captioner_failed: {type(err).__name__}: {err}")
        share = float(p.bgmask.mean())
        if share < MIN_BACKGROUND_SHARE:
            return Caption(
                "",
                error=f"not_a_world_picture: only {share:.0%} of it is a known background",
            )
        blobs = [b for b in p.objects if b.solid and not b.clipped and b.colour is not None]
        colours = [b.colour for b in blobs]
        if not blobs or len(set(colours)) != len(colours) or len(blobs) > MAX_OBJECTS:
            return Caption("", error=f"not_a_world_picture: {len(blobs)} whole objects seen")
        style = self.vision.style(image, p) or "flat"
        objects = tuple(
            ObjSpec(b.kind, b.colour, b.size, b.cell)
            for b in sorted(blobs, key=lambda b: (b.cy, b.cx))
            if b.colour is not None
        )
        scene = SceneSpec(style=style, background=p.bg_top, objects=objects)
        rng = np.random.default_rng(derive_seed("caption", pixel_hash(image)))
        return Caption(write_prompt(scene, rng), style=style, topic=p.bg_top)


class SyntheticCaptionWriter(Backend):
    """Writes k instructions valid for the scene a caption describes."""

    model_id = "synthetic-caption-writer"
    version = "synthetic-caption-writer-v1"

    def __init__(self, prompter: SyntheticPrompter) -> None:
        self.prompter = prompter

    def instructions(self, requests: list[CaptionRequest]) -> list[InstructionSet]:
        """One set per request, deterministic in (prompt_id, seed, k, caption)."""
        out = []
        for req in requests:
            try:
                scene = parse_prompt(req.caption)
                rng = np.random.default_rng(derive_seed("caption-writer", req.prompt_id, req.seed))
                drafts = self.prompter.instructions_for(rng, scene, req.k, req.prompt_id)
            except ValueError as err:
                out.append(InstructionSet((), error=f"unwritable: {err}"))
                continue
            out.append(InstructionSet(tuple(drafts)))
        return out
