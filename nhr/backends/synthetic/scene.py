"""The synthetic world's vocabulary and its layout model.

A :class:`Layout` is what an image depicts: a style, a background and placed objects (kind,
colour, size class, grid cell, exact relative centre and scale), plus the render defects of
an implausible source and the damage an editor left behind (ghosts, half-recoloured
objects, artifacts, colour drift). Layouts are frozen, JSON-serialisable and hold relative
coordinates only; :func:`place_in_cell` turns a cell into a centre for a given pixel size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "diamond",
    "cross",
    "heart",
)

# Named colours, each well separated from the others and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 145, 30),
    "yellow": (245, 220, 40),
    "lime": (160, 225, 50),
    "green": (30, 140, 60),
    "cyan": (40, 210, 220),
    "blue": (40, 70, 215),
    "purple": (135, 55, 190),
    "pink": (245, 120, 200),
    "brown": (120, 70, 30),
    "white": (250, 250, 250),
    "magenta": (200, 30, 150),
}

SIZES: tuple[str, ...] = ("small", "medium", "large")
# Object diameter as a fraction of the image's short side.
SIZE_FRACTION: dict[str, float] = {"small": 0.14, "medium": 0.2, "large": 0.27}
SIZE_JITTER = 0.06

# Vertical gradients (top colour, bottom colour).
BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "sand beach": ((236, 222, 172), (212, 190, 130)),
    "night sky": ((14, 18, 48), (46, 50, 90)),
    "meadow": ((170, 200, 140), (120, 160, 100)),
    "ocean": ((70, 150, 175), (30, 100, 140)),
    "sunset sky": ((250, 160, 130), (222, 108, 108)),
    "foggy morning": ((188, 194, 206), (148, 154, 170)),
}

STYLES: tuple[str, ...] = ("flat", "outlined", "shaded", "grainy", "pixel-art")

# 3x3 grid cells: name -> (column, row).
CELLS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
CELL_AT: dict[tuple[int, int], str] = {v: k for k, v in CELLS.items()}

INK: tuple[int, int, int] = (70, 20, 40)  # outline colour of the "outlined" style
GHOST_ALPHA = 0.45  # opacity of traces an editor leaves behind
MAX_OBJECTS = 6


@dataclass(frozen=True)
class PlacedObject:
    """One depicted object: centre (x, y) relative to width/height, ``scale`` × short side.

    ``alpha`` < 1 draws a ghost; ``split_colour`` paints the right half another colour;
    ``flaw`` names editor damage ("ghost", "split", "half_resized") and is "" when clean.
    """

    kind: str
    colour: str
    size: str
    cell: str
    x: float
    y: float
    scale: float
    alpha: float = 1.0
    split_colour: str = ""
    flaw: str = ""

    @property
    def clean(self) -> bool:
        """True for a fully drawn, undamaged object."""
        return not self.flaw and self.alpha >= 0.9 and not self.split_colour

    @property
    def ref(self) -> str:
        """How instructions name it: "red circle"."""
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Artifact:
    """A blotch left by an editor: centre, radius (× short side), colour."""

    x: float
    y: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Layout:
    """What an image depicts; rendering a layout at a size is deterministic."""

    style: str
    background: str
    objects: tuple[PlacedObject, ...]
    noise_seed: int = 0
    defects: tuple[str, ...] = ()
    old_background: str = ""  # partial background edit: bottom half keeps this one
    old_style: str = ""  # partial style edit: right half keeps this style
    drift: tuple[int, int, int] = (0, 0, 0)
    artifacts: tuple[Artifact, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Inverse of :meth:`to_dict`."""
        return cls(
            style=data["style"],
            background=data["background"],
            objects=tuple(PlacedObject(**o) for o in data["objects"]),
            noise_seed=int(data.get("noise_seed", 0)),
            defects=tuple(data.get("defects", ())),
            old_background=data.get("old_background", ""),
            old_style=data.get("old_style", ""),
            drift=tuple(data.get("drift", (0, 0, 0))),  # type: ignore[arg-type]
            artifacts=tuple(
                Artifact(a["x"], a["y"], a["radius"], tuple(a["rgb"]))  # type: ignore[arg-type]
                for a in data.get("artifacts", ())
            ),
        )

    def depiction(self) -> Layout:
        """The layout without bookkeeping that does not change pixels (defect markers)."""
        return replace(self, defects=())

    def find(self, colour: str, kind: str) -> PlacedObject | None:
        """The clean object of that colour and kind, if any."""
        for o in self.objects:
            if o.clean and o.colour == colour and o.kind == kind:
                return o
        return None


def cell_span(index: int, length: int, diameter_px: float, short: int) -> tuple[float, float]:
    """Allowed centre range (pixels) on one axis for an object of ``diameter_px`` in a cell."""
    cell = length / 3.0
    margin = max(1.5, 0.025 * short)
    lo = index * cell + diameter_px / 2 + margin
    hi = (index + 1) * cell - diameter_px / 2 - margin
    mid = (index + 0.5) * cell
    if lo > hi:
        return mid, mid
    # keep within the image even for edge cells
    lo = max(lo, diameter_px / 2 + margin)
    hi = min(hi, length - diameter_px / 2 - margin)
    if lo > hi:
        return mid, mid
    return lo, hi


def place_in_cell(
    rng: np.random.Generator, cell: str, scale: float, width: int, height: int
) -> tuple[float, float]:
    """A jittered relative centre (x, y) inside ``cell`` for an object of ``scale``."""
    col, row = CELLS[cell]
    short = min(width, height)
    d = scale * short
    x_lo, x_hi = cell_span(col, width, d, short)
    y_lo, y_hi = cell_span(row, height, d, short)
    x = x_lo + (x_hi - x_lo) * float(rng.random())
    y = y_lo + (y_hi - y_lo) * float(rng.random())
    return x / width, y / height


def clamp_to_cell(obj: PlacedObject, width: int, height: int) -> PlacedObject:
    """Move ``obj`` the least needed so that it fits its cell at its (new) scale."""
    col, row = CELLS[obj.cell]
    short = min(width, height)
    d = obj.scale * short
    x_lo, x_hi = cell_span(col, width, d, short)
    y_lo, y_hi = cell_span(row, height, d, short)
    x = min(max(obj.x * width, x_lo), x_hi) / width
    y = min(max(obj.y * height, y_lo), y_hi) / height
    return replace(obj, x=x, y=y)


def jittered_scale(rng: np.random.Generator, size: str) -> float:
    """Scale of a new object of size class ``size``."""
    return SIZE_FRACTION[size] * (1.0 + SIZE_JITTER * (2.0 * float(rng.random()) - 1.0))


def resized_scale(obj: PlacedObject, size: str) -> float:
    """Scale of ``obj`` resized to ``size``, keeping its own jitter factor."""
    return obj.scale / SIZE_FRACTION[obj.size] * SIZE_FRACTION[size]


def cell_of(x: float, y: float) -> str:
    """Grid cell of a relative point."""
    col = min(2, max(0, int(x * 3)))
    row = min(2, max(0, int(y * 3)))
    return CELL_AT[(col, row)]
