"""The synthetic instruction editor: re-renders a source's layout with the edit applied.

Its "understanding" of the source is the layout the truth store holds for it. Whether it
succeeds depends on seed, steps and guidance, and it fails the ways real editors fail:
no change, wrong target, partial edit, collateral change, global colour drift, artifacts.
A share ``hard_share`` of (source, instruction) pairs (drawn by a hash of the pair) it
cannot do at all, as a real editor has instructions it does not understand on some
images: every seed of such a pair fails, most of them by changing nothing.

``skill`` (None: the editor as calibrated for mining) fixes how often an edit succeeds:
the share of correct outcomes at any steps and guidance, the rest failing in the same
proportions as the calibrated editor's failures. Editors of known, ordered skill are
what a benchmark of editors must rank in their true order.

``spread`` gives (source, instruction) pairs their own difficulty, as real editors have
pairs they nearly always get right and pairs they nearly never do: each pair's chance of
a correct edit is drawn once (by a hash of the pair) from a Beta whose mean is the
editor's chance at that steps and guidance and whose intra-pair correlation is
``spread`` (0: every seed independent, the default). ``GROUP_SPREADS`` holds named
settings: ``paper`` is calibrated so that the paper's scheduler (jobs drawn uniformly
from the grid, 48.5 per prompt) reproduces its funnel (15.3 % of edits pass the hard
validator; the argmax step drops 31 % of the passes).

A picture the truth store does not know (a world picture re-encoded, resized, or read
from a benchmark file) is read from its pixels, as the captioner reads a photo: the
judge's perception names its background, style and whole objects, that layout is
recorded as the picture's truth, and the edit re-renders it. A picture that is not of
the world (a real photo) is refused with an error naming it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image

from nhr.backends.base import Backend
from nhr.backends.names import SYNTHETIC_GROUP_SPREADS
from nhr.seeds import derive_seed

from .language import Edit, parse_instruction, resize_target
from .perception import Vision
from .raster import render
from .scene import (
    BACKGROUNDS,
    CELLS,
    COLOURS,
    GHOST_ALPHA,
    KINDS,
    SIZES,
    STYLES,
    Artifact,
    Layout,
    PlacedObject,
    clamp_to_cell,
    jittered_scale,
    place_in_cell,
    resized_scale,
)
from .truth import SyntheticTruth, pixel_hash

OUTCOMES: tuple[str, ...] = (
    "correct",
    "no_change",
    "wrong_target",
    "partial",
    "collateral",
    "drift",
    "artifacts",
)
_TINTS = ((1, 0.5, -1), (-1, 0, 1), (1, 1, 1), (-1, -1, -1), (-0.5, 1, -0.5), (1, -0.5, 0.5))


# how a (source, instruction) pair the editor cannot do fails, seed by seed
HARD_OUTCOMES: dict[str, float] = {"no_change": 0.7, "wrong_target": 0.2, "partial": 0.1}


# named group spreads: (intra-pair correlation, scale of the chance of a correct edit)
GROUP_SPREADS = SYNTHETIC_GROUP_SPREADS


def group_spread(value: float | str) -> tuple[float, float]:
    """(correlation, rate scale) of a ``spread``: a number in [0, 1) or a named one."""
    if isinstance(value, str):
        if value not in GROUP_SPREADS:
            raise ValueError(
                f"group spread {value!r} is not a named setting; use a number in [0, 1) "
                f"or one of: {', '.join(GROUP_SPREADS)}"
            )
        return GROUP_SPREADS[value]
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"group spread must be in [0, 1) or a named setting, got {value!r}")
    return float(value), 1.0


def pair_chance(mean: float, correlation: float, quantile: float) -> float:
    """A pair's chance of a correct edit: the ``quantile`` of the Beta of ``mean`` whose
    intra-pair correlation 1 / (a + b + 1) is ``correlation`` (``mean`` itself at 0)."""
    if correlation <= 0.0 or mean <= 0.0 or mean >= 1.0:
        return mean
    from scipy.special import betaincinv  # only a run with a spread needs scipy

    total = 1.0 / correlation - 1.0
    return float(betaincinv(mean * total, (1.0 - mean) * total, quantile))


def skilled_probabilities(skill: float, steps: int, guidance: float) -> dict[str, float]:
    """Outcome probabilities of an editor of ``skill``: correct with probability
    ``skill``, the failures in the calibrated editor's proportions at (steps, guidance)."""
    base = outcome_probabilities(steps, guidance)
    fails = {k: v for k, v in base.items() if k != "correct"}
    total = sum(fails.values())
    return {"correct": skill, **{k: (1.0 - skill) * v / total for k, v in fails.items()}}


def outcome_probabilities(steps: int, guidance: float) -> dict[str, float]:
    """Probability of each outcome at (steps, guidance); correct peaks near guidance 3.5."""
    g = float(guidance)
    few = max(0.0, 24.0 - steps) / 12.0
    w = {
        "correct": 0.32 * math.exp(-(((g - 3.5) / 2.0) ** 2)) * (1.0 - 0.3 * min(1.0, few)),
        "no_change": 0.11 * math.exp(-(g - 3.5) * 1.2),
        "wrong_target": 0.09,
        "partial": 0.13 * math.exp(-(g - 3.5) * 0.8) * (1.0 + 0.5 * few),
        "collateral": 0.12 * math.exp((g - 3.5) * 0.6),
        "drift": 0.11 * math.exp((g - 3.5) * 0.9),
        "artifacts": 0.11 * math.exp((g - 3.5) * 0.7) * (1.0 + few),
    }
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


class SyntheticEditor(Backend):
    """Applies instructions to world images; output is always the input's size."""

    model_id = "synthetic-editor-v1"
    work = "cpu"  # re-renders in Python and numpy: worth a process per core

    def __init__(
        self,
        truth: SyntheticTruth,
        hard_share: float = 0.0,
        skill: float | None = None,
        spread: float | str = 0.0,
    ) -> None:
        if not 0.0 <= float(hard_share) <= 1.0:
            raise ValueError(f"hard_share must be in [0, 1], got {hard_share!r}")
        if skill is not None and not 0.0 <= float(skill) <= 1.0:
            raise ValueError(f"skill must be in [0, 1], got {skill!r}")
        self.truth = truth
        self.hard_share = float(hard_share)
        self.skill = None if skill is None else float(skill)
        self.spread = spread
        self.correlation, self.rate_scale = group_spread(spread)
        # provenance: an editor of other skill or spread is another model
        if self.skill is not None:
            self.model_id = f"synthetic-editor-v1-skill{self.skill:g}"
        if self.correlation or self.rate_scale != 1.0:
            name = spread if isinstance(spread, str) else f"{self.correlation:g}"
            self.model_id = f"{self.model_id}-spread-{name}"
        self._vision: Vision | None = None

    def is_hard(self, digest: str, text: str) -> bool:
        """Whether the pair (source pixels ``digest``, instruction) is one this editor
        cannot do (the same answer for every seed, step count and guidance)."""
        if not self.hard_share:
            return False
        u = np.random.default_rng(derive_seed("hard-pair", digest, text)).random()
        return bool(u < self.hard_share)

    def probabilities(
        self, digest: str, text: str, steps: int, guidance: float
    ) -> dict[str, float]:
        """Outcome probabilities of an edit of the pair (source pixels ``digest``,
        instruction) at (steps, guidance): a hard pair's failures, else the editor's
        (at its skill), with the pair's own chance of success under a spread."""
        if self.is_hard(digest, text):
            return HARD_OUTCOMES
        if self.skill is not None:
            probs = skilled_probabilities(self.skill, steps, guidance)
        else:
            probs = outcome_probabilities(steps, guidance)
        if not self.correlation and self.rate_scale == 1.0:
            return probs
        mean = min(1.0, self.rate_scale * probs["correct"])
        u = float(np.random.default_rng(derive_seed("pair-chance", digest, text)).random())
        chance = pair_chance(mean, self.correlation, u)
        fails = {k: v for k, v in probs.items() if k != "correct"}
        total = sum(fails.values())
        return {"correct": chance, **{k: (1.0 - chance) * v / total for k, v in fails.items()}}

    # ------------------------------------------------------------ protocol
    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        steps: list[int],
        guidance: float,
    ) -> list[Image.Image]:
        """Edit each image with its instruction, seed and step count."""
        n = len(images)
        if not (len(instructions) == len(seeds) == len(steps) == n):
            raise ValueError(
                "edit() needs one instruction, seed and step count per image; got "
                f"{n} images, {len(instructions)} instructions, {len(seeds)} seeds, "
                f"{len(steps)} steps"
            )
        return [
            self._edit_one(im, text, int(s), int(st), float(guidance))
            for im, text, s, st in zip(images, instructions, seeds, steps, strict=True)
        ]

    # ------------------------------------------------------------ internals
    def _edit_one(
        self, image: Image.Image, text: str, seed: int, steps: int, guidance: float
    ) -> Image.Image:
        image = image.convert("RGB") if image.mode != "RGB" else image
        try:
            src = self.truth.layout(image)
        except KeyError as err:
            src = self.read_pixels(image, err.args[0])
        w, h = image.size
        digest = pixel_hash(image)
        rng = np.random.default_rng(
            derive_seed("edit", digest, text, seed, steps, f"{guidance:.4f}")
        )
        try:
            instr = parse_instruction(text)
        except ValueError:
            return image.copy()
        probs = self.probabilities(digest, text, steps, guidance)
        modes = [o for o in OUTCOMES if o in probs]
        mode = modes[int(rng.choice(len(modes), p=[probs[o] for o in modes]))]
        out = self.outcome_layout(src, list(instr.edits), mode, rng, w, h)
        if out is None or out.depiction() == src.depiction():
            return image.copy()
        result = render(out, w, h)
        if mode != "correct":
            # a failure that happens to look exactly like success is a success: keep the
            # truth consistent with the pixels
            good = _apply_all(src, list(instr.edits), np.random.default_rng(0), w, h)
            if good is not None and _same_objects(good, out):
                good_img = render(good, w, h)
                if good_img.tobytes() == result.tobytes():
                    out = good
        if pixel_hash(result) != digest:
            self.truth.record(result, out)
        return result

    def read_pixels(self, image: Image.Image, unknown: str = "") -> Layout:
        """The layout a world picture the truth store does not know depicts, read from
        its pixels (background, style, whole objects) and recorded as its truth."""
        if self._vision is None:
            self._vision = Vision()
        refuse = (
            f"{self.model_id} can only edit pictures of the synthetic world; this one is "
            f"unknown to the truth store ({unknown}) and its pixels do not read as one"
        )
        fix = " (render sources with SyntheticRenderer, or give world pictures saved as PNG)"
        try:
            seen = self._vision.perceive(image)
        except Exception as err:  # odd pixels: refused below with the reason
            raise ValueError(f"{refuse}: {type(err).__name__}: {err}{fix}") from None
        blobs = [b for b in seen.objects if b.solid and not b.clipped and b.colour is not None]
        colours = [b.colour for b in blobs]
        if float(seen.bgmask.mean()) < 0.4 or not blobs or len(set(colours)) != len(colours):
            raise ValueError(refuse + fix)
        objects = tuple(
            PlacedObject(b.kind, str(b.colour), b.size, b.cell, b.cx, b.cy, b.diam)
            for b in sorted(blobs, key=lambda b: (b.cy, b.cx))
        )
        style = self._vision.style(image, seen) or "flat"
        seed = int(pixel_hash(image)[:8], 16) & 0x7FFFFFFF
        layout = Layout(style, seen.bg_top, objects, noise_seed=seed)
        self.truth.record(image, layout)
        return layout

    def outcome_layout(
        self,
        src: Layout,
        edits: list[Edit],
        mode: str,
        rng: np.random.Generator,
        w: int,
        h: int,
    ) -> Layout | None:
        """The layout an edit with outcome ``mode`` produces (None: nothing changes)."""
        if mode == "no_change":
            return None
        if mode == "partial":
            if len(edits) > 1:
                keep = int(rng.integers(len(edits)))
                return _apply_all(src, edits[:keep] + edits[keep + 1 :], rng, w, h)
            return _apply(src, edits[0], rng, w, h, partial=True)
        if mode == "wrong_target":
            first = _wrong(src, edits[0], rng, w, h)
            if first is None:
                return None
            return _apply_all(first, edits[1:], rng, w, h)
        out = _apply_all(src, edits, rng, w, h)
        if out is None:
            return None
        if mode == "collateral":
            return _collateral(src, out, edits, rng, w, h)
        if mode == "drift":
            m = int(rng.integers(8, 17))
            tint = _TINTS[int(rng.integers(len(_TINTS)))]
            return replace(out, drift=tuple(round(m * c) for c in tint))  # type: ignore[arg-type]
        if mode == "artifacts":
            return _with_artifacts(src, out, rng, w, h)
        return out


# ---------------------------------------------------------------- edit application
def _free_cells(layout: Layout) -> list[str]:
    used = {o.cell for o in layout.objects}
    return [c for c in CELLS if c not in used]


def _unused_colours(layout: Layout, also: tuple[str, ...] = ()) -> list[str]:
    used = {o.colour for o in layout.objects} | set(also)
    return [c for c in COLOURS if c not in used]


def _index(layout: Layout, target: tuple[str, str] | None) -> int | None:
    if target is None:
        return None
    for i, o in enumerate(layout.objects):
        if o.clean and (o.colour, o.kind) == target:
            return i
    return None


def _set(layout: Layout, i: int, obj: PlacedObject | None) -> Layout:
    objs = list(layout.objects)
    if obj is None:
        del objs[i]
    else:
        objs[i] = obj
    return replace(layout, objects=tuple(objs))


def _apply_all(
    layout: Layout | None, edits: list[Edit], rng: np.random.Generator, w: int, h: int
) -> Layout | None:
    for e in edits:
        if layout is None:
            return None
        layout = _apply(layout, e, rng, w, h)
    return layout


def _apply(
    layout: Layout,
    e: Edit,
    rng: np.random.Generator,
    w: int,
    h: int,
    partial: bool = False,
    target: int | None = None,
) -> Layout | None:
    """``layout`` after edit ``e`` (on object index ``target`` if given); None if impossible."""
    if e.type == "background":
        if not e.background:
            return None
        if partial:
            return replace(layout, background=e.background, old_background=layout.background)
        return replace(layout, background=e.background)
    if e.type == "style":
        if not e.style:
            return None
        if partial:
            # a half-restyled picture must look half-restyled: both halves need objects
            # unless one of the styles also changes the background (grain, pixel blocks)
            xs = [o.x for o in layout.objects if o.clean]
            visible = any(x < 0.5 for x in xs) and any(x >= 0.5 for x in xs)
            if not visible and not {e.style, layout.style} & {"grainy", "pixel-art"}:
                return None
            return replace(layout, style=e.style, old_style=layout.style)
        return replace(layout, style=e.style)
    if e.type == "add":
        assert e.kind and e.colour
        free = _free_cells(layout)
        cell = e.cell or (free[int(rng.integers(len(free)))] if free else "center")
        size = e.size or SIZES[int(rng.integers(3))]
        scale = jittered_scale(rng, size)
        x, y = place_in_cell(rng, cell, scale, w, h)
        alpha, flaw = (0.5, "ghost") if partial else (1.0, "")
        obj = PlacedObject(e.kind, e.colour, size, cell, x, y, scale, alpha=alpha, flaw=flaw)
        return replace(layout, objects=(*layout.objects, obj))
    i = _index(layout, e.target) if target is None else target
    if i is None:
        return None
    o = layout.objects[i]
    if e.type == "remove":
        if partial:
            return _set(layout, i, replace(o, alpha=GHOST_ALPHA, flaw="ghost"))
        return _set(layout, i, None)
    if e.type == "recolour":
        if not e.colour or e.colour == o.colour:
            return None
        if partial:
            return _set(layout, i, replace(o, split_colour=e.colour, flaw="split"))
        return _set(layout, i, replace(o, colour=e.colour))
    if e.type == "replace":
        size = e.size or o.size
        new = clamp_to_cell(
            replace(
                o,
                kind=e.kind or o.kind,
                colour=e.colour or o.colour,
                size=size,
                scale=resized_scale(o, size),
            ),
            w,
            h,
        )
        if partial:
            stale = _set(layout, i, replace(o, flaw="stale"))
            return replace(stale, objects=(*stale.objects, replace(new, alpha=0.3, flaw="ghost")))
        return _set(layout, i, new)
    if e.type == "resize":
        size = resize_target(o.size, e)
        if size == o.size:
            return None
        scale = resized_scale(o, size)
        if partial:
            half = o.scale + 0.3 * (scale - o.scale)
            return _set(
                layout,
                i,
                clamp_to_cell(replace(o, size=size, scale=half, flaw="half_resized"), w, h),
            )
        return _set(layout, i, clamp_to_cell(replace(o, size=size, scale=scale), w, h))
    if e.type == "move":
        if not e.cell or e.cell == o.cell:
            return None
        x, y = place_in_cell(rng, e.cell, o.scale, w, h)
        moved = replace(o, cell=e.cell, x=x, y=y)
        if partial:
            ghost = replace(o, alpha=GHOST_ALPHA, flaw="ghost")
            objs = list(layout.objects)
            objs[i] = ghost
            return replace(layout, objects=(*objs, moved))
        return _set(layout, i, moved)
    return None


def _same_objects(a: Layout, b: Layout) -> bool:
    """Same objects up to exact placement of freely placed ones (cell, size, kind, colour)."""
    key = lambda o: (o.kind, o.colour, o.size, o.cell, o.alpha, o.split_colour)  # noqa: E731
    return sorted(map(key, a.objects)) == sorted(map(key, b.objects)) and (
        a.background,
        a.style,
        a.drift,
        a.artifacts,
        a.old_background,
        a.old_style,
    ) == (b.background, b.style, b.drift, b.artifacts, b.old_background, b.old_style)


def _wrong(layout: Layout, e: Edit, rng: np.random.Generator, w: int, h: int) -> Layout | None:
    """Apply ``e`` to the wrong thing: another object, colour, background or style."""
    if e.type == "background":
        options = [b for b in BACKGROUNDS if b not in (e.background, layout.background)]
        return replace(layout, background=options[int(rng.integers(len(options)))])
    if e.type == "style":
        options = [s for s in STYLES if s not in (e.style, layout.style)]
        return replace(layout, style=options[int(rng.integers(len(options)))])
    if e.type == "add":
        colours = _unused_colours(layout, (e.colour or "",))
        if not colours:
            return None
        kind = e.kind if rng.random() < 0.5 else KINDS[int(rng.integers(len(KINDS)))]
        return _apply(
            layout,
            replace(e, colour=colours[int(rng.integers(len(colours)))], kind=kind),
            rng,
            w,
            h,
        )
    tgt = _index(layout, e.target)
    others = [
        i for i, o in enumerate(layout.objects) if o.clean and i != tgt and o.colour != e.colour
    ]
    rng.shuffle(others)
    for i in others:
        out = _apply(layout, e, rng, w, h, target=i)
        if out is not None:
            return out
    return None


def _collateral(
    src: Layout, out: Layout, edits: list[Edit], rng: np.random.Generator, w: int, h: int
) -> Layout | None:
    """``out`` plus one unrequested change to an object the edits left alone."""
    untouched = [i for i, o in enumerate(out.objects) if o.clean and o in src.objects]
    targets = {e.target for e in edits if e.target}
    untouched = [
        i for i in untouched if (out.objects[i].colour, out.objects[i].kind) not in targets
    ]
    if not untouched:
        types = {e.type for e in edits}
        if "background" not in types and rng.random() < 0.5:
            options = [b for b in BACKGROUNDS if b != out.background]
            return replace(out, background=options[int(rng.integers(len(options)))])
        colours = _unused_colours(out)
        if not colours or not _free_cells(out):
            return None
        extra = Edit("add", kind=KINDS[int(rng.integers(len(KINDS)))], colour=colours[0])
        return _apply(
            out, replace(extra, colour=colours[int(rng.integers(len(colours)))]), rng, w, h
        )
    i = untouched[int(rng.integers(len(untouched)))]
    o = out.objects[i]
    for kind in rng.permutation(["remove", "recolour", "move", "resize"]):
        if kind == "remove":
            return _set(out, i, None)
        if kind == "recolour":
            colours = _unused_colours(out)
            if colours:
                return _set(out, i, replace(o, colour=colours[int(rng.integers(len(colours)))]))
        if kind == "move":
            free = _free_cells(out)
            if free:
                cell = free[int(rng.integers(len(free)))]
                x, y = place_in_cell(rng, cell, o.scale, w, h)
                return _set(out, i, replace(o, cell=cell, x=x, y=y))
        if kind == "resize":
            size = SIZES[(SIZES.index(o.size) + (1 if o.size != "large" else -1))]
            return _set(
                out,
                i,
                clamp_to_cell(replace(o, size=size, scale=resized_scale(o, size)), w, h),
            )
    return _set(out, i, None)


def artifact_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A muddy colour far from every palette colour and background."""
    pal = np.asarray(list(COLOURS.values()), float)
    bgs = []
    for top, bottom in BACKGROUNDS.values():
        for t in np.linspace(0, 1, 6):
            bgs.append(np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t)
    bg = np.asarray(bgs)
    for _ in range(200):
        c = rng.integers(60, 200, size=3).astype(float)
        if np.linalg.norm(pal - c, axis=1).min() > 70 and np.abs(bg - c).max(axis=1).min() > 45:
            return (int(c[0]), int(c[1]), int(c[2]))
    return (96, 128, 96)


def _with_artifacts(src: Layout, out: Layout, rng: np.random.Generator, w: int, h: int) -> Layout:
    """``out`` plus 1–3 blotches placed away from the objects the edit changed."""
    changed = [o for o in out.objects if o not in src.objects]
    changed += [o for o in src.objects if o not in out.objects]
    short = min(w, h)
    arts: list[Artifact] = []
    for _ in range(int(rng.integers(1, 4))):
        r = 0.035 + 0.03 * float(rng.random())
        for _attempt in range(40):
            x, y = float(rng.uniform(0.05, 0.95)), float(rng.uniform(0.05, 0.95))
            ok = all(
                math.hypot((x - o.x) * w, (y - o.y) * h) > (o.scale / 2 + 2 * r + 0.04) * short
                for o in changed
            ) and all(
                math.hypot((x - a.x) * w, (y - a.y) * h) > (a.radius + r + 0.05) * short
                for a in arts
            )
            if ok:
                arts.append(Artifact(x, y, r, artifact_colour(rng)))
                break
    if not arts:
        arts.append(Artifact(0.5, 0.5, 0.05, artifact_colour(rng)))
    return replace(out, artifacts=(*out.artifacts, *arts))
