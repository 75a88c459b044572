"""FLUX.1 Kontext editor (``FluxKontextPipeline``); default
``black-forest-labs/FLUX.1-Kontext-dev``.

Kontext was trained at a fixed list of about-1024² resolutions; with
``preferred_resolutions`` (the default) a source is edited at the one nearest its aspect
ratio, scaled to ``max_area``, else at the source's own aspect. Either way the pipeline
is told the exact working size (no second resize inside it) and the result comes back
at the source's size.
"""

from __future__ import annotations

import math
from typing import Any

from PIL import Image

from nhr.backends.diffusers_runtime import DiffusersEditor, DiffusersOptions, Residency, snap


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
    ) -> None:
        super().__init__(model, options, max_area, residency)
        self.preferred_resolutions = preferred_resolutions

    def work_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The nearest preferred Kontext resolution scaled to ``max_area``, or the
        source's aspect at ``max_area``; snapped to the pipeline's multiple."""
        if not self.preferred_resolutions:
            return super().work_size(size)
        from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

        aspect = size[0] / size[1]
        _, w, h = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
        s = math.sqrt(self.max_area / (w * h))
        return snap(w * s, self.multiple), snap(h * s, self.multiple)

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
