"""The judge's eyes: perception from pixels alone (no truth store, no layouts).

It knows what a VLM knows about this world (the palette, the named backgrounds, what the
shapes look like) and finds objects as connected non-background regions, names their
colour by the palette, their kind by shape templates, their size and grid cell by
geometry, and flags ghosts (faded colour), mixed colours and clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .raster import shape_mask
from .scene import BACKGROUNDS, COLOURS, INK, KINDS, cell_of

PALETTE_NAMES: tuple[str, ...] = tuple(COLOURS)
PALETTE = np.asarray([COLOURS[c] for c in PALETTE_NAMES], np.float32)
WORK_LONG = 320  # images with a longer side are sampled down (by an integer stride)
BG_TOL = 30  # max channel distance to the expected background
PALETTE_RADIUS = 52.0
FADED = 22.0  # mean colour this far from the palette colour: a ghost/faded object
SIZE_EDGES = (0.168, 0.232)  # small | medium | large, as bbox / short side
_GRID = 8
_STRUCT8 = np.ones((3, 3), bool)


@dataclass
class Blob:
    """One connected non-background region: an object, a ghost or an artifact."""

    colour: str | None  # majority palette colour (None: mostly off-palette)
    colour_share: float  # share of the region's pixels in that colour
    purity: float  # share of pixels in that colour or outline ink (clean objects: ~1)
    second: str | None  # a second palette colour holding >= 25 % (half-recoloured?)
    kind: str
    kind_margin: float
    size: str
    diam: float  # bbox long side / image short side
    cx: float  # bbox centre, relative
    cy: float
    cell: str
    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 in work pixels
    clipped: bool
    faded: bool
    mask: np.ndarray  # bool, bbox crop

    @property
    def solid(self) -> bool:
        """A clean, whole object of a palette colour."""
        return (
            self.colour is not None
            and not self.faded
            and self.second is None
            and self.purity >= 0.95
        )


@dataclass
class Percept:
    """What the judge sees in one image."""

    arr: np.ndarray  # int16 (h, w, 3), work resolution
    stride: int
    bg_top: str
    bg_bottom: str
    offset: np.ndarray  # float32 (3,), global colour shift vs the known background
    expected: np.ndarray  # int16 (h, w, 3) view, background the judge expects (incl. offset)
    bgmask: np.ndarray  # bool (h, w)
    blobs: list[Blob]

    @property
    def objects(self) -> list[Blob]:
        """Blobs that look like objects (a palette colour holds most of them)."""
        return [b for b in self.blobs if b.colour is not None]

    @property
    def short(self) -> int:
        """Short side in work pixels."""
        return min(self.arr.shape[:2])


def max3(a: np.ndarray) -> np.ndarray:
    """Max over the last (channel) axis of size 3; much faster than ``a.max(axis=-1)``."""
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2])


def _bg_rows(name: str, h: int) -> np.ndarray:
    top, bottom = BACKGROUNDS[name]
    t = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t


def _grid(mask: np.ndarray) -> np.ndarray:
    im = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    return np.asarray(im.resize((_GRID, _GRID), Image.Resampling.BOX), np.float32).ravel() / 255


class Vision:
    """Stateless perception with precomputed world knowledge (palette LUT, shape templates)."""

    def __init__(self) -> None:
        levels = (np.arange(32, dtype=np.float32) * 8 + 4)[:, None]
        cube = np.stack(np.meshgrid(levels[:, 0], levels[:, 0], levels[:, 0], indexing="ij"), -1)
        flat = cube.reshape(-1, 1, 3)
        dist = np.linalg.norm(flat - PALETTE[None], axis=2)
        lut = dist.argmin(axis=1).astype(np.int8)
        lut[dist.min(axis=1) > PALETTE_RADIUS] = -2
        ink = np.linalg.norm(flat[:, 0] - np.asarray(INK, np.float32), axis=1) < 40
        lut[ink] = len(PALETTE_NAMES)
        self._lut = lut
        sizes = (4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 19, 22, 26, 32, 40, 56)
        self._tgrids = np.stack([_grid(shape_mask(k, n)) for k in KINDS for n in sizes])

    # ------------------------------------------------------------ perception
    def perceive(self, image: Image.Image, work_long: int = WORK_LONG) -> Percept:
        """Find background, colour shift and blobs in ``image`` (sampled to ``work_long``)."""
        full = np.asarray(image.convert("RGB"), np.int16)
        h0, w0 = full.shape[:2]
        stride = -(-max(h0, w0) // work_long) if max(h0, w0) > work_long else 1
        arr = full[::stride, ::stride]
        h, w = arr.shape[:2]
        band = max(1, h // 16)
        top_med = np.median(arr[:band].reshape(-1, 3), axis=0)
        bot_med = np.median(arr[-band:].reshape(-1, 3), axis=0)
        tc = (band / 2) / h
        names = list(BACKGROUNDS)

        def exp_at(name: str, t: float) -> np.ndarray:
            top, bottom = BACKGROUNDS[name]
            return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t

        d_top = [np.linalg.norm(top_med - exp_at(n, tc)) for n in names]
        d_bot = [np.linalg.norm(bot_med - exp_at(n, 1 - tc)) for n in names]
        joint = int(np.argmin(np.add(d_top, d_bot)))
        bg_top, bg_bottom = names[int(np.argmin(d_top))], names[int(np.argmin(d_bot))]
        if bg_top != bg_bottom and max(d_top[joint], d_bot[joint]) < 30:
            bg_top = bg_bottom = names[joint]
        rows = _bg_rows(bg_top, h)
        if bg_bottom != bg_top:
            rows[h // 2 :] = _bg_rows(bg_bottom, h)[h // 2 :]
        rows3 = rows[:, None, :]
        frame = np.concatenate(
            [
                (arr[:band] - rows3[:band]).reshape(-1, 3),
                (arr[-band:] - rows3[-band:]).reshape(-1, 3),
                (arr[:, :band] - rows3).reshape(-1, 3),
                (arr[:, -band:] - rows3).reshape(-1, 3),
            ]
        )
        inl = max3(np.abs(frame)) < 40
        offset = (
            np.median(frame[inl], axis=0).astype(np.float32)
            if inl.sum() > 8
            else np.zeros(3, np.float32)
        )
        exp_rows = (rows + offset).round().astype(np.int16)[:, None, :]
        expected = np.broadcast_to(exp_rows, (h, w, 3))
        q = arr - offset.round().astype(np.int16)
        bgmask = max3(np.abs(arr - exp_rows)) <= BG_TOL
        qc = np.clip(q, 0, 255) >> 3
        labels = self._lut[(qc[..., 0] << 10) | (qc[..., 1] << 5) | qc[..., 2]]
        labels = np.where(bgmask, np.int8(-1), labels)
        blobs = self._blobs(q, labels, ~bgmask)
        return Percept(arr, stride, bg_top, bg_bottom, offset, expected, bgmask, blobs)

    def _blobs(self, q: np.ndarray, labels: np.ndarray, fg: np.ndarray) -> list[Blob]:
        h, w = fg.shape
        short = min(h, w)
        comp, n = ndimage.label(fg, structure=_STRUCT8)
        if n == 0:
            return []
        min_area = max(4, int(0.0012 * short * short))
        areas = np.bincount(comp.ravel(), minlength=n + 1)
        keep = np.nonzero(areas >= min_area)[0]
        keep = keep[keep > 0]
        if len(keep) == 0:
            return []
        if len(keep) > 40:
            keep = keep[np.argsort(areas[keep])[::-1][:40]]
        npal = len(PALETTE_NAMES)
        sel = fg & np.isin(comp, keep)
        cid = comp[sel]
        # columns: 0 unknown, 1 background (unused), 2.. palette, last: outline ink
        width = npal + 3
        lab = labels[sel].astype(np.int64) + 2
        key = cid.astype(np.int64) * width + lab
        counts = np.bincount(key, minlength=(n + 1) * width).reshape(n + 1, width)
        qs = q[sel].astype(np.float64)
        sums = np.stack(
            [np.bincount(key, weights=qs[:, c], minlength=(n + 1) * width) for c in range(3)],
            -1,
        ).reshape(n + 1, width, 3)
        slices = ndimage.find_objects(comp)
        blobs = []
        for c in keep:
            sl = slices[c - 1]
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            mask = comp[sl] == c
            area = int(areas[c])
            pal_counts = counts[c, 2 : 2 + npal]
            inked = int(counts[c, 2 + npal])
            order = np.argsort(pal_counts)[::-1]
            top = int(order[0])
            share = float(pal_counts[top]) / max(1, area - inked)
            colour = PALETTE_NAMES[top] if share >= 0.5 else None
            second = None
            if len(order) > 1 and pal_counts[order[1]] >= 0.25 * (area - inked):
                second = PALETTE_NAMES[int(order[1])]
            faded = False
            if colour is not None:
                mean = sums[c, 2 + top] / max(1, pal_counts[top])
                faded = float(np.linalg.norm(mean - PALETTE[top])) > FADED
            g = _grid(mask)
            d = np.sqrt(((self._tgrids - g[None]) ** 2).sum(axis=1))
            per_kind = d.reshape(len(KINDS), -1).min(axis=1)
            rank = np.argsort(per_kind)
            kind = KINDS[int(rank[0])]
            margin = float(per_kind[rank[1]] - per_kind[rank[0]])
            diam = max(y1 - y0, x1 - x0) / short
            size = (
                "small" if diam < SIZE_EDGES[0] else "medium" if diam < SIZE_EDGES[1] else "large"
            )
            cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
            cell = cell_of(cx, cy)
            clipped = y0 == 0 or x0 == 0 or y1 == h or x1 == w
            blobs.append(
                Blob(
                    colour=colour,
                    colour_share=share,
                    purity=(float(pal_counts[top]) + inked) / area,
                    second=second,
                    kind=str(kind),
                    kind_margin=margin,
                    size=size,
                    diam=diam,
                    cx=cx,
                    cy=cy,
                    cell=cell,
                    area=area,
                    bbox=(y0, x0, y1, x1),
                    clipped=clipped,
                    faded=faded,
                    mask=mask,
                )
            )
        return blobs

    # ------------------------------------------------------------ style
    def style_options(
        self, image: Image.Image, percept: Percept, half: str | None = None
    ) -> frozenset[str]:
        """Styles the image (or its ``"left"``/``"right"`` half) may be drawn in.

        One style when it can be told; {flat, outlined, shaded} for a region with no
        object to look at (those three draw the background alike).
        """
        full = np.asarray(image.convert("RGB"), np.int16)
        h0, w0 = full.shape[:2]
        mid = w0 // 2
        x0, x1 = (0, mid) if half == "left" else (mid, w0) if half == "right" else (0, w0)
        s = percept.stride
        bg = percept.bgmask[:, x0 // s : max(x0 // s + 1, x1 // s)]
        arr = percept.arr[:, x0 // s : max(x0 // s + 1, x1 // s)]
        # grain: horizontal neighbours differ in the background
        both = bg[:, 1:] & bg[:, :-1]
        if both.sum() > 20:
            dx = np.abs(np.diff(arr, axis=1)).sum(axis=2)[both]
            if float(np.median(dx)) >= 4:
                return frozenset({"grainy"})
        # pixel art: every colour edge and every background step sits on a block boundary
        part = full[:, x0:x1]
        rows = part[:: max(1, h0 // 48)]
        cols_idx = np.linspace(0, part.shape[1] - 1, num=min(24, part.shape[1])).astype(int)
        cols = part[:, cols_idx]
        xt = np.nonzero(max3(np.abs(np.diff(rows, axis=1))) > 30)[1] + 1 + x0
        yt = np.nonzero(max3(np.abs(np.diff(cols, axis=0))) > 0)[0] + 1
        pos = np.concatenate([xt, yt])
        if len(pos) >= 10:
            for b in range(min(64, max(2, min(h0, w0) // 4)), 1, -1):
                if np.mean(pos % b == 0) >= 0.97:
                    return frozenset({"pixel-art"})
        # outline and shading, from the objects in this region
        objs = [
            o
            for o in percept.objects
            if not o.faded and (half is None or (o.cx < 0.5) == (half == "left")) and o.area >= 30
        ]
        if not objs:
            return frozenset({"flat", "outlined", "shaded"})
        dark, rim, spread = 0, 0, []
        for o in objs:
            y0, bx0, y1, bx1 = o.bbox
            sub = percept.arr[y0:y1, bx0:bx1]
            inner = ndimage.binary_erosion(o.mask, iterations=1)
            edge = o.mask & ~inner
            ink = (sub.sum(axis=2) < 0.6 * float(np.sum(COLOURS[o.colour or "red"]))) & edge
            dark += int(ink.sum())
            rim += int(edge.sum())
            core = ndimage.binary_erosion(o.mask, iterations=2)
            if core.sum() >= 12:
                lum = sub[core].astype(np.float32).mean(axis=1)
                spread.append(float(lum.std()) / max(20.0, float(lum.mean())))
        if rim and dark / rim > 0.5:
            return frozenset({"outlined"})
        if spread and float(np.median(spread)) > 0.015:
            return frozenset({"shaded"})
        return frozenset({"flat"})

    def pixel_block(self, image: Image.Image) -> int:
        """Block size if the image is pixel art (every edge on a block grid), else 1."""
        full = np.asarray(image.convert("RGB"), np.int16)
        h0, w0 = full.shape[:2]
        rows = full[:: max(1, h0 // 48)]
        cols = full[:, np.linspace(0, w0 - 1, num=min(24, w0)).astype(int)]
        xt = np.nonzero(max3(np.abs(np.diff(rows, axis=1))) > 30)[1] + 1
        yt = np.nonzero(max3(np.abs(np.diff(cols, axis=0))) > 0)[0] + 1
        pos = np.concatenate([xt, yt])
        if len(pos) >= 10:
            for b in range(min(64, max(2, min(h0, w0) // 4)), 1, -1):
                if np.mean(pos % b == 0) >= 0.97:
                    return b
        return 1

    def style(self, image: Image.Image, percept: Percept, half: str | None = None) -> str | None:
        """The style if it can be told, else None."""
        opts = self.style_options(image, percept, half)
        return next(iter(opts)) if len(opts) == 1 else None
