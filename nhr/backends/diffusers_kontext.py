"""FLUX.1 Kontext editor (``FluxKontextPipeline``); default
``black-forest-labs/FLUX.1-Kontext-dev``.

Kontext was trained at a fixed list of about-1024² resolutions
(``nhr.resolutions.KONTEXT_RESOLUTIONS``); with ``preferred_resolutions`` (the default)
a source is edited at the one nearest its aspect ratio, scaled to ``max_area``, else at
the nearest of ``buckets`` (RESOLUTIONS) or the source's own aspect. Either way the
pipeline is told the exact working size (no second resize inside it) and the result
comes back at the source's size.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from nhr.backends.diffusers_runtime import DiffusersEditor, DiffusersOptions, Residency
from nhr.resolutions import KONTEXT_RESOLUTIONS, Size


class KontextEditor(DiffusersEditor):
    """Instruction edits with FLUX.1 Kontext; ``guidance`` is its distilled guidance."""

    pipeline_class = "FluxKontextPipeline"
    default_model = "black-forest-labs/FLUX.1-Kontext-dev"
    default_area = 1024 * 1024

    def __init__(
        self,
        model: str = "",
        options: DiffusersOptions | None = None,
        max_area: int = 0,
        residency: Residency | None = None,
        preferred_resolutions: bool = True,
        buckets: tuple[Size, ...] | None = None,
        lora: str = "",
        lora_scale: float = 1.0,
        scheduler: str = "default",
    ) -> None:
        super().__init__(model, options, max_area, residency, buckets, lora, lora_scale, scheduler)
        self.preferred_resolutions = preferred_resolutions

    @property
    def work_buckets(self) -> tuple[Size, ...] | None:
        """Kontext's trained resolutions (``preferred_resolutions``), else the buckets."""
        return KONTEXT_RESOLUTIONS if self.preferred_resolutions else self.buckets

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
        """One batched Kontext call at exactly ``size``."""
        w, h = size
        return pipe(
            image=images,
            prompt=instructions,
            width=w,
            height=h,
            max_area=w * h,
            _auto_resize=False,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
        ).images
