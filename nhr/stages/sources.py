"""Stage 2: N source images per prompt at the paper's random resolutions, or at sizes
drawn from a bucket list (``nhr.resolutions``) so that sources share few sizes."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from nhr.backends.base import TextToImage, contract
from nhr.records import PromptRow, SourceRow
from nhr.resolutions import Size, fit_long_side
from nhr.seeds import derive_seed, rng_for
from nhr.stages.base import Stage
from nhr.store import BlobStore


def sample_size(
    rng: np.random.Generator,
    long_min: int,
    long_max: int,
    aspect_max: float,
    multiple: int,
) -> tuple[int, int]:
    """Draw (width, height): long side uniform in [long_min, long_max], log-aspect uniform
    in [1:aspect_max, aspect_max:1], both sides snapped to ``multiple`` and kept in range."""
    lo = math.ceil(long_min / multiple) * multiple
    hi = max(lo, math.floor(long_max / multiple) * multiple)
    long_side = int(rng.integers(lo // multiple, hi // multiple + 1)) * multiple
    aspect = math.exp(rng.uniform(-math.log(aspect_max), math.log(aspect_max)))
    ratio = max(aspect, 1 / aspect)
    short_min = math.ceil(long_side / aspect_max / multiple) * multiple
    short = round(long_side / ratio / multiple) * multiple
    short = min(long_side, max(short, short_min, multiple))
    return (long_side, short) if aspect >= 1 else (short, long_side)


class SourceStage(Stage[PromptRow, SourceRow]):
    """Renders ``n_seeds`` images of each prompt in one call, one seed per image.

    Without ``resolutions`` each size is drawn freely (``sample_size``); with a bucket
    list each is drawn uniformly from the buckets, fitted to the long-side range and
    aspect limit (``fit_long_side``), so the editor's calls can batch equal sizes.
    """

    name = "sources"
    input_type = PromptRow
    output_type = SourceRow
    backend_fields = ("t2i",)

    def __init__(
        self,
        t2i: TextToImage,
        blobs: BlobStore,
        n_seeds: int,
        long_side: tuple[int, int],
        aspect_max: float,
        steps: int,
        guidance: float,
        seed: int,
        resolutions: tuple[Size, ...] | None = None,
    ) -> None:
        self.t2i = t2i
        self.blobs = blobs
        self.n_seeds = n_seeds
        self.long_side = long_side
        self.aspect_max = aspect_max
        self.steps = steps
        self.guidance = guidance
        self.seed = seed
        self.resolutions = resolutions
        self._buckets: tuple[Size, ...] | None = None

    def buckets(self) -> tuple[Size, ...] | None:
        """The sizes sources are drawn from (None: drawn freely), fitted to this run."""
        if self.resolutions is not None and self._buckets is None:
            self._buckets = fit_long_side(
                self.resolutions, *self.long_side, self.aspect_max, self.t2i.size_multiple
            )
        return self._buckets

    def own_settings(self) -> dict[str, Any]:
        return {
            "t2i": self.t2i.model_id,
            "n_seeds": self.n_seeds,
            "long_side": list(self.long_side),
            "aspect_max": self.aspect_max,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            **({"resolutions": [list(b) for b in self.resolutions]} if self.resolutions else {}),
        }

    def setup(self) -> None:
        """Load the model before the first batch, so load time is not billed to a batch."""
        contract(self.t2i).load()

    def plan(self, prompt: PromptRow) -> list[tuple[str, int, tuple[int, int]]]:
        """(source_id, seed, size) of each of a prompt's N renders."""
        out = []
        buckets = self.buckets()
        for n in range(self.n_seeds):
            seed = derive_seed(self.seed, prompt.prompt_id, "source", n)
            rng = rng_for(self.seed, prompt.prompt_id, "size", n)
            if buckets:
                w, h = buckets[int(rng.integers(len(buckets)))]
                size = (w, h)
            else:
                size = sample_size(rng, *self.long_side, self.aspect_max, self.t2i.size_multiple)
            out.append((f"{prompt.prompt_id}-s{n}", seed, size))
        return out

    def process_batch(self, rows: list[PromptRow]) -> list[SourceRow]:
        """Render every (prompt, seed) of the batch in one backend call and store the images."""
        plans = [(p, *job) for p in rows for job in self.plan(p)]
        t0 = time.perf_counter()
        images = self.t2i.generate(
            [p.text for p, *_ in plans],
            [seed for _, _, seed, _ in plans],
            [size for *_, size in plans],
            self.steps,
            self.guidance,
        )
        per_image = (time.perf_counter() - t0) / max(1, len(plans))
        out = []
        for (prompt, source_id, seed, size), image in zip(plans, images, strict=True):
            if image.size != size:
                raise ValueError(
                    f"{self.t2i.model_id} returned {image.size} for requested size {size}"
                )
            out.append(
                SourceRow(
                    source_id=source_id,
                    prompt_id=prompt.prompt_id,
                    prompt=prompt.text,
                    style=prompt.style,
                    seed=seed,
                    width=size[0],
                    height=size[1],
                    image=self.blobs.put(image),
                    model_id=self.t2i.model_id,
                    steps=self.steps,
                    guidance=self.guidance,
                    seconds=per_image,
                )
            )
        return out
