"""InstructPix2Pix editor (``StableDiffusionInstructPix2PixPipeline``), default
``timbrooks/instruct-pix2pix``: a Stable Diffusion 1.5 model, so it works at 512²."""

from __future__ import annotations

from typing import Any

from PIL import Image

from nhr.backends.diffusers_runtime import DiffusersEditor, DiffusersOptions, Residency
from nhr.resolutions import Size


class Pix2PixEditor(DiffusersEditor):
    """Instruction edits with InstructPix2Pix; ``guidance`` is the text guidance scale,
    ``image_guidance`` how closely the edit keeps to the source (the paper's 1.5)."""

    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    default_model = "timbrooks/instruct-pix2pix"
    default_area = 512 * 512

    def __init__(
        self,
        model: str = "",
        options: DiffusersOptions | None = None,
        max_area: int = 0,
        residency: Residency | None = None,
        image_guidance: float = 1.5,
        buckets: tuple[Size, ...] | None = None,
        lora: str = "",
        lora_scale: float = 1.0,
        scheduler: str = "default",
    ) -> None:
        super().__init__(model, options, max_area, residency, buckets, lora, lora_scale, scheduler)
        self.image_guidance = image_guidance

    def call(
        self,
        pipe: Any,
        images: list[Image.Image],
        instructions: list[str],
        gens: list[Any],
        steps: int,
        guidance: float,
        size: tuple[int, int],
    ) -> list[Image.Image]:
        """One batched InstructPix2Pix call (the output has the input's size)."""
        return pipe(
            image=images,
            prompt=instructions,
            num_inference_steps=steps,
            guidance_scale=guidance,
            image_guidance_scale=self.image_guidance,
            generator=gens,
        ).images
