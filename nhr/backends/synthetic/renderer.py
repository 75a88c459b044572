"""The synthetic text-to-image model: parses the prompt text and renders the scene.

It sees only the prompt text, like a real T2I model. The seed jitters positions and
sizes, and a share of seeds (``implausible_rate``) render implausibly: an object missing,
clipped by the border, or an extra object nobody asked for.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from PIL import Image

from nhr.backends.base import Backend
from nhr.seeds import derive_seed

from .language import parse_prompt
from .raster import render
from .scene import (
    CELLS,
    COLOURS,
    KINDS,
    SIZES,
    Layout,
    PlacedObject,
    jittered_scale,
    place_in_cell,
)
from .truth import SyntheticTruth

MIN_SIDE = 8
MAX_SIDE = 4096
DEFECT_KINDS = ("missing", "clipped", "extra")
DEFECT_WEIGHTS = (0.4, 0.35, 0.25)


class SyntheticRenderer(Backend):
    """Renders synthetic-world prompts; records each image's layout in the truth store."""

    model_id = "synthetic-t2i-v1"
    work = "cpu"  # rasterizes in Python and numpy: worth a process per core
    size_multiple = 8

    def __init__(self, truth: SyntheticTruth, implausible_rate: float = 0.4) -> None:
        if not 0.0 <= float(implausible_rate) <= 1.0:
            raise ValueError(f"implausible_rate must be in [0, 1], got {implausible_rate!r}")
        self.truth = truth
        self.implausible_rate = float(implausible_rate)
        if self.implausible_rate != 0.4:  # provenance: another rate is another model
            self.model_id = f"synthetic-t2i-v1-implausible{self.implausible_rate:g}"

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sizes: list[tuple[int, int]],
        steps: int,
        guidance: float,
    ) -> list[Image.Image]:
        """One image per (prompt, seed, (width, height)); steps/guidance do not matter here."""
        if not (len(prompts) == len(seeds) == len(sizes)):
            raise ValueError(
                f"generate() needs one seed and size per prompt; got {len(prompts)} prompts, "
                f"{len(seeds)} seeds, {len(sizes)} sizes"
            )
        images = []
        for prompt, seed, size in zip(prompts, seeds, sizes, strict=True):
            w, h = int(size[0]), int(size[1])
            if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
                raise ValueError(
                    f"image size {w}x{h} out of range: each side must be in "
                    f"[{MIN_SIDE}, {MAX_SIDE}] pixels"
                )
            layout = self.layout_for(prompt, int(seed), w, h)
            image = render(layout, w, h)
            self.truth.record(image, layout)
            images.append(image)
        return images

    def layout_for(self, prompt: str, seed: int, width: int, height: int) -> Layout:
        """The layout this model draws for ``prompt`` at ``seed`` and size."""
        try:
            scene = parse_prompt(prompt)
        except ValueError as err:
            raise ValueError(
                f"{self.model_id} only understands prompts in the synthetic world's grammar "
                f"(write them with SyntheticPrompter): {err}"
            ) from None
        rng = np.random.default_rng(derive_seed("render", prompt, seed))
        objects = []
        for spec in scene.objects:
            scale = jittered_scale(rng, spec.size)
            x, y = place_in_cell(rng, spec.cell, scale, width, height)
            objects.append(PlacedObject(spec.kind, spec.colour, spec.size, spec.cell, x, y, scale))
        layout = Layout(
            style=scene.style,
            background=scene.background,
            objects=tuple(objects),
            noise_seed=int(rng.integers(2**31)),
        )
        if rng.random() < self.implausible_rate:
            layout = _spoil(layout, rng, width, height)
        return layout


def _spoil(layout: Layout, rng: np.random.Generator, w: int, h: int) -> Layout:
    """An implausible render of ``layout``: missing, clipped or extra object."""
    kind = DEFECT_KINDS[int(rng.choice(3, p=DEFECT_WEIGHTS))]
    objs = list(layout.objects)
    if kind == "clipped":
        edge_objs = [i for i, o in enumerate(objs) if o.cell != "center"]
        if not edge_objs:
            kind = "missing"
        else:
            i = edge_objs[int(rng.integers(len(edge_objs)))]
            o = objs[i]
            col, row = CELLS[o.cell]
            edges = [
                e
                for e, ok in (("l", col == 0), ("r", col == 2), ("t", row == 0), ("b", row == 2))
                if ok
            ]
            edge = edges[int(rng.integers(len(edges)))]
            short = min(w, h)
            d = o.scale * short
            inside = d * (0.5 - float(rng.uniform(0.3, 0.55)))  # centre distance from the edge
            x, y = o.x, o.y
            if edge == "l":
                x = inside / w
            elif edge == "r":
                x = 1 - inside / w
            elif edge == "t":
                y = inside / h
            else:
                y = 1 - inside / h
            objs[i] = replace(o, x=x, y=y)
            return replace(layout, objects=tuple(objs), defects=(f"clipped:{o.ref}",))
    if kind == "extra":
        used_c = {o.colour for o in objs}
        used_cells = {o.cell for o in objs}
        colours = [c for c in COLOURS if c not in used_c]
        cells = [c for c in CELLS if c not in used_cells]
        if colours and cells:
            size = SIZES[int(rng.integers(3))]
            cell = cells[int(rng.integers(len(cells)))]
            scale = jittered_scale(rng, size)
            x, y = place_in_cell(rng, cell, scale, w, h)
            extra = PlacedObject(
                KINDS[int(rng.integers(len(KINDS)))],
                colours[int(rng.integers(len(colours)))],
                size,
                cell,
                x,
                y,
                scale,
            )
            return replace(layout, objects=(*objs, extra), defects=(f"extra:{extra.ref}",))
        kind = "missing"
    i = int(rng.integers(len(objs)))
    gone = objs.pop(i)
    return replace(layout, objects=tuple(objs), defects=(f"missing:{gone.ref}",))
