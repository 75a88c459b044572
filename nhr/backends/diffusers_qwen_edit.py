"""Qwen-Image-Edit editor (``QwenImageEditPipeline``), default ``Qwen/Qwen-Image-Edit``.

Qwen-Image-Edit uses true classifier-free guidance: ``guidance`` is its
``true_cfg_scale`` (the model card's 4.0), with a blank negative prompt.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from nhr.backends.diffusers_runtime import DiffusersEditor


class QwenImageEditor(DiffusersEditor):
    """Instruction edits with Qwen-Image-Edit at about ``max_area`` pixels."""

    pipeline_class = "QwenImageEditPipeline"
    default_model = "Qwen/Qwen-Image-Edit"
    default_area = 1024 * 1024

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
        """One batched Qwen-Image-Edit call at exactly ``size``."""
        w, h = size
        return pipe(
            image=images,
            prompt=instructions,
            negative_prompt=[" "] * len(images),
            true_cfg_scale=guidance,
            width=w,
            height=h,
            num_inference_steps=steps,
            generator=gens,
        ).images
