"""Drawing: shape masks and the deterministic rendering of a :class:`Layout` at a size."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .scene import BACKGROUNDS, COLOURS, INK, Layout, PlacedObject

_HEART = tuple(
    (
        16 * math.sin(t) ** 3,
        -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)),
    )
    for t in np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
)
_STAR = tuple(
    (
        (1.0 if i % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
        (1.0 if i % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5),
    )
    for i in range(10)
)
_CROSS = (
    (-1 / 3, -1),
    (1 / 3, -1),
    (1 / 3, -1 / 3),
    (1, -1 / 3),
    (1, 1 / 3),
    (1 / 3, 1 / 3),
    (1 / 3, 1),
    (-1 / 3, 1),
    (-1 / 3, 1 / 3),
    (-1, 1 / 3),
    (-1, -1 / 3),
    (-1 / 3, -1 / 3),
)


def _fit(points: tuple[tuple[float, float], ...], n: int) -> list[tuple[float, float]]:
    """Scale a polygon so its bounding box fills an n×n canvas."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    s = n - 1
    return [((x - x0) / (x1 - x0) * s, (y - y0) / (y1 - y0) * s) for x, y in points]


def shape_mask(kind: str, n: int) -> np.ndarray:
    """Boolean n×n mask of ``kind``, filling its box (upright, centred)."""
    n = max(3, int(n))
    im = Image.new("L", (n, n), 0)
    d = ImageDraw.Draw(im)
    s = n - 1
    if kind == "circle":
        d.ellipse((0, 0, s, s), fill=255)
    elif kind == "square":
        d.rectangle((0, 0, s, s), fill=255)
    elif kind == "triangle":
        d.polygon([(s / 2, 0), (s, s), (0, s)], fill=255)
    elif kind == "diamond":
        d.polygon([(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)], fill=255)
    elif kind == "star":
        d.polygon(_fit(_STAR, n), fill=255)
    elif kind == "cross":
        d.polygon(_fit(_CROSS, n), fill=255)
    elif kind == "heart":
        d.polygon(_fit(_HEART, n), fill=255)
    elif kind == "ring":
        d.ellipse((0, 0, s, s), fill=255)
        inset = max(1.0, 0.24 * n)
        d.ellipse((inset, inset, s - inset, s - inset), fill=0)
    else:
        raise ValueError(f"unknown object kind {kind!r}")
    return np.asarray(im) > 127


def background_array(name: str, width: int, height: int) -> np.ndarray:
    """The named vertical gradient as float32 (H, W, 3)."""
    top, bottom = BACKGROUNDS[name]
    t = ((np.arange(height, dtype=np.float32) + 0.5) / height)[:, None]
    rows = np.asarray(top, np.float32)[None, :] * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.broadcast_to(rows[:, None, :], (height, width, 3)).copy()


def pixel_block(width: int, height: int) -> int:
    """Block size of the pixel-art style at this image size."""
    return max(2, round(min(width, height) / 40))


def _draw_object(canvas: np.ndarray, obj: PlacedObject, style: str) -> None:
    h, w = canvas.shape[:2]
    short = min(w, h)
    n = max(3, round(obj.scale * short))
    mask = shape_mask(obj.kind, n)
    x0 = round(obj.x * w - n / 2)
    y0 = round(obj.y * h - n / 2)
    xs0, xs1 = max(0, x0), min(w, x0 + n)
    ys0, ys1 = max(0, y0), min(h, y0 + n)
    if xs0 >= xs1 or ys0 >= ys1:
        return
    colour = np.empty((n, n, 3), np.float32)
    colour[:] = COLOURS[obj.colour]
    if obj.split_colour:
        colour[:, n // 2 :] = COLOURS[obj.split_colour]
    if style == "shaded":
        u = np.linspace(0.0, 1.0, n, dtype=np.float32)
        factor = 1.12 - 0.27 * (u[None, :] + u[:, None]) / 2
        colour *= factor[:, :, None]
    elif style == "outlined":
        t = max(1, round(n / 14))
        ring = mask & ~ndimage.binary_erosion(mask, iterations=t)
        colour[ring] = INK
    m = mask[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
    col = colour[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0]
    region = canvas[ys0:ys1, xs0:xs1]
    a = float(obj.alpha)
    if a >= 1.0:
        region[m] = col[m]
    else:
        region[m] = a * col[m] + (1.0 - a) * region[m]


def _draw_artifacts(canvas: np.ndarray, layout: Layout) -> None:
    h, w = canvas.shape[:2]
    short = min(w, h)
    for art in layout.artifacts:
        r = max(1.5, art.radius * short)
        cx, cy = art.x * w, art.y * h
        y0, y1 = max(0, int(cy - 2 * r)), min(h, int(cy + 2 * r) + 1)
        x0, x1 = max(0, int(cx - 2 * r)), min(w, int(cx + 2 * r) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        sy, sx = np.ogrid[y0:y1, x0:x1]
        blob = (sx - cx) ** 2 + (sy - cy) ** 2 <= r * r
        blob |= (sx - cx - 0.6 * r) ** 2 + (sy - cy - 0.4 * r) ** 2 <= (0.7 * r) ** 2
        canvas[y0:y1, x0:x1][blob] = art.rgb


def _render_plain(layout: Layout, width: int, height: int) -> np.ndarray:
    """Render one style (no split) to float32 (H, W, 3), before drift."""
    if layout.style == "pixel-art":
        b = pixel_block(width, height)
        lw, lh = -(-width // b), -(-height // b)
        low = _render_plain(replace(layout, style="flat"), lw, lh)
        return np.repeat(np.repeat(low, b, axis=0), b, axis=1)[:height, :width]
    canvas = background_array(layout.background, width, height)
    if layout.old_background:
        half = height // 2
        canvas[half:] = background_array(layout.old_background, width, height)[half:]
    for obj in layout.objects:
        _draw_object(canvas, obj, layout.style)
    if layout.artifacts:
        _draw_artifacts(canvas, layout)
    if layout.style == "grainy":
        rng = np.random.default_rng(layout.noise_seed)
        canvas += rng.integers(-14, 15, size=(height, width, 3), dtype=np.int8)
    return canvas


def render_array(layout: Layout, width: int, height: int) -> np.ndarray:
    """Render ``layout`` at (width, height) to a uint8 RGB array."""
    if layout.old_style:
        new = _render_plain(replace(layout, old_style=""), width, height)
        old = _render_plain(replace(layout, style=layout.old_style, old_style=""), width, height)
        new[:, width // 2 :] = old[:, width // 2 :]
        canvas = new
    else:
        canvas = _render_plain(layout, width, height)
    if any(layout.drift):
        canvas += np.asarray(layout.drift, np.float32)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def render(layout: Layout, width: int, height: int) -> Image.Image:
    """Render ``layout`` at (width, height) to a PIL RGB image."""
    return Image.fromarray(render_array(layout, width, height), "RGB")
