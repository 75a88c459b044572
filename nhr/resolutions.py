"""Resolution buckets: the few (width, height) sizes sources are drawn at and editors
work at, so that jobs share sizes and a diffusers call can carry many images.

``PAPER_RESOLUTIONS`` stands for the NHR-Edit dataset's 26 resolutions, which run from
640×1600 to 1600×640; the paper does not list them, so this is a principled
reconstruction, not the paper's table: 26 aspect ratios log-uniform from 1:2.5 to 2.5:1
(both ends included, symmetric, no exact square), each at 640·1600 = 1,024,000 pixels
(about 1 MP), both sides rounded to a multiple of 32 (``paper_resolutions()`` rebuilds
it). ``KONTEXT_RESOLUTIONS`` are the 17 resolutions FLUX.1 Kontext was trained at
(diffusers' ``PREFERRED_KONTEXT_RESOLUTIONS``, copied here so the table needs no torch).

A size's bucket is the one nearest in log-aspect ratio (symmetric between portrait and
landscape). ``fit_long_side`` scales a bucket list into a run's ``LONG_SIDE`` range (the
demo's 128–256 px), so a small run keeps the buckets' aspect ratios and few sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Size = tuple[int, int]

PAPER_AREA = 640 * 1600
PAPER_ASPECT_MAX = 2.5
PAPER_COUNT = 26
PAPER_MULTIPLE = 32

# (width, height), portrait to landscape; equals paper_resolutions()
PAPER_RESOLUTIONS: tuple[Size, ...] = (
    (640, 1600),
    (672, 1536),
    (704, 1472),
    (704, 1440),
    (736, 1376),
    (768, 1344),
    (800, 1280),
    (832, 1248),
    (864, 1184),
    (896, 1152),
    (928, 1120),
    (960, 1056),
    (992, 1024),
    (1024, 992),
    (1056, 960),
    (1120, 928),
    (1152, 896),
    (1184, 864),
    (1248, 832),
    (1280, 800),
    (1344, 768),
    (1376, 736),
    (1440, 704),
    (1472, 704),
    (1536, 672),
    (1600, 640),
)

# (width, height): FLUX.1 Kontext's trained resolutions, as diffusers lists them
KONTEXT_RESOLUTIONS: tuple[Size, ...] = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)

RESOLUTION_SETS: dict[str, tuple[Size, ...]] = {
    "paper": PAPER_RESOLUTIONS,
    "kontext": KONTEXT_RESOLUTIONS,
}
CHOICES = ("free", *RESOLUTION_SETS)


def paper_resolutions(
    count: int = PAPER_COUNT,
    aspect_max: float = PAPER_ASPECT_MAX,
    area: int = PAPER_AREA,
    multiple: int = PAPER_MULTIPLE,
) -> tuple[Size, ...]:
    """``count`` sizes of about ``area`` pixels at log-uniform aspect ratios from
    1:``aspect_max`` to ``aspect_max``:1, sides rounded to ``multiple``."""
    span = math.log(aspect_max)
    out = []
    for i in range(count):
        aspect = math.exp(-span + 2 * span * i / (count - 1))
        w = round(math.sqrt(area * aspect) / multiple) * multiple
        h = round(math.sqrt(area / aspect) / multiple) * multiple
        out.append((w, h))
    return tuple(out)


def resolution_set(name: str) -> tuple[Size, ...] | None:
    """The bucket list called ``name`` (``paper``, ``kontext``); None for ``free``."""
    if name == "free":
        return None
    if name not in RESOLUTION_SETS:
        raise ValueError(f"unknown resolution set {name!r}; known: {', '.join(CHOICES)}")
    return RESOLUTION_SETS[name]


def nearest(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket nearest ``size`` (w, h) in log-aspect ratio (first of a tie)."""
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - aspect))


def _snap(x: float, multiple: int) -> int:
    """``x`` rounded to a positive multiple of ``multiple``."""
    return max(multiple, round(x / multiple) * multiple)


def scaled(bucket: Size, area: int, multiple: int) -> Size:
    """``bucket`` scaled to about ``area`` pixels at its aspect, sides snapped."""
    s = math.sqrt(area / (bucket[0] * bucket[1]))
    return _snap(bucket[0] * s, multiple), _snap(bucket[1] * s, multiple)


def fit_long_side(
    buckets: Sequence[Size],
    long_min: int,
    long_max: int,
    aspect_max: float,
    multiple: int,
) -> tuple[Size, ...]:
    """The buckets within ``aspect_max`` (1:x to x:1), scaled by one factor into the long
    side range [``long_min``, ``long_max``] and snapped to ``multiple`` (duplicates after
    snapping dropped, order kept).

    A list whose long sides already lie in the range keeps its sizes (the paper's
    860–2200 px holds every 1 MP bucket). Otherwise the factor puts the largest long side
    at ``long_max``; a bucket whose long side then falls below ``long_min`` (a range
    narrower than the list's) is raised to it, keeping its aspect.
    """
    keep = [b for b in buckets if max(b) / min(b) <= aspect_max + 1e-9]
    if not keep:
        keep = [min(buckets, key=lambda b: max(b) / min(b))]
    longest = max(max(b) for b in keep)
    shortest = min(max(b) for b in keep)
    factor = 1.0 if long_min <= shortest and longest <= long_max else long_max / longest
    out: dict[Size, None] = {}
    for w, h in keep:
        s = factor * max(1.0, long_min / (max(w, h) * factor))
        size = (_snap(w * s, multiple), _snap(h * s, multiple))
        out.setdefault(size, None)
    return tuple(out)
