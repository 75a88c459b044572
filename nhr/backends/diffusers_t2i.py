"""Text-to-image with any ``AutoPipelineForText2Image`` model id or local folder;
default ``black-forest-labs/FLUX.1-schnell`` (4 steps, guidance 0, as in the paper).

The source stage asks for N seeds per prompt, each at its own sampled size. A diffusers
call takes one size, so images are grouped by size and each group runs in batched calls
(at most ``max_batch`` images) with one CPU ``torch.Generator`` per image: an image is
the same whichever batch it was drawn in, and its seed is stored with its row.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from nhr.backends.base import Backend
from nhr.backends.diffusers_runtime import (
    DiffusersOptions,
    PipelineHolder,
    Residency,
    chunks,
    fit,
    generators,
)


class DiffusersTextToImage(Backend):
    """A ``TextToImage`` backend over a diffusers text-to-image pipeline."""

    default_model = "black-forest-labs/FLUX.1-schnell"
    work = "device"  # the model stays resident: one batch at a time, in this process

    def __init__(
        self,
        model: str = "",
        options: DiffusersOptions | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.model_id = model or self.default_model
        self.options = options or DiffusersOptions()
        self.holder = PipelineHolder(
            "AutoPipelineForText2Image", self.model_id, self.options, "text-to-image", residency
        )

    @property
    def size_multiple(self) -> int:
        """Sides must be multiples of this: the VAE's factor, ×2 for packed-latent DiTs."""
        pipe = self.holder.get()
        factor = int(getattr(pipe, "vae_scale_factor", 8))
        return factor * 2 if hasattr(pipe, "_pack_latents") else factor

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sizes: list[tuple[int, int]],
        steps: int,
        guidance: float,
    ) -> list[Image.Image]:
        """One image per (prompt, seed, size (w, h)), in order."""
        if not len(prompts) == len(seeds) == len(sizes):
            raise ValueError("prompts, seeds and sizes differ in length")
        pipe = self.holder.get()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(sizes):
            groups.setdefault(tuple(size), []).append(i)  # type: ignore[arg-type]
        out: list[Image.Image | None] = [None] * len(prompts)
        for (w, h), idx in groups.items():
            for part in chunks(idx, self.options.max_batch):
                with self.holder.timed(len(part), (w, h)):
                    images = pipe(
                        prompt=[prompts[i] for i in part],
                        width=w,
                        height=h,
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        generator=generators([seeds[i] for i in part]),
                    ).images
                for i, image in zip(part, images, strict=True):
                    out[i] = fit(image, (w, h))
        return [o for o in out if o is not None]

    def usage(self) -> dict[str, float]:
        """Calls, images, device seconds and load seconds so far."""
        return self.holder.usage()

    def load(self) -> Any:
        """Load the pipeline now (else it loads on first use)."""
        return self.holder.get()
