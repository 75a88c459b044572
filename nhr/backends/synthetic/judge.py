"""The synthetic VLM judge: sees only pixels and text, answers in the validator's schema.

HARD RULE: nothing here reads the truth store, a layout, a file name or metadata. The
judge perceives both images (:mod:`.perception`), reads the instruction with the world's
grammar, predicts what should have changed, compares, and scores 1–5 like the paper's
validator (InstructionAdherence, ImageAesthetic), plus seeded pseudo-noise so it errs
like a real, imperfect VLM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from nhr.backends.base import PrefilterAnswer, Scores, YesNo, check_triplet_lengths
from nhr.seeds import derive_seed

from .language import Edit, Instruction, parse_instruction, parse_prompt, resize_target
from .perception import WORK_LONG, Blob, Percept, Vision, max3
from .scene import SIZE_FRACTION

PREFILTER_LONG = 160  # the pre-filter looks at smaller images
CHANGE_LEVEL = 30  # per-pixel max channel change that counts as a change
MIN_SIDE = 8


@dataclass
class _Entry:
    """An object the judge expects to see after the edit."""

    colour: str
    kind: str | None
    size: str | None
    cell: str | None
    mode: str  # "exact", "near" (same place, new colour), "cell", "resize", "free"
    src: Blob | None  # where it was in the source
    edit: int | None = None
    ratio: float = 1.0  # expected size ratio vs src (resize)
    match: Blob | None = None


@dataclass
class Assessment:
    """The judge's reading of one (source, edit, instruction)."""

    adherence: float
    aesthetic: float
    reason: str
    changed_fraction: float = 0.0
    drift: float = 0.0
    collateral: int = 0
    artifacts: int = 0
    statuses: list[float] = field(default_factory=list)


def _fingerprint(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:32]


def _drift_penalty(mag: float) -> float:
    return min(2.5, 0.6 + 0.09 * mag) if mag >= 4 else 0.0


def _overlap(a: Blob, b: Blob) -> float:
    """Intersection over the smaller box area of two blobs' bounding boxes."""
    ay0, ax0, ay1, ax1 = a.bbox
    by0, bx0, by1, bx1 = b.bbox
    iy = max(0, min(ay1, by1) - max(ay0, by0))
    ix = max(0, min(ax1, bx1) - max(ax0, bx0))
    small = min((ay1 - ay0) * (ax1 - ax0), (by1 - by0) * (bx1 - bx0))
    return iy * ix / max(1, small)


def _mask_in(shape: tuple[int, int], b: Blob, grow: int = 0) -> np.ndarray:
    """The blob's mask in image coordinates, optionally dilated by ``grow`` pixels."""
    out = np.zeros(shape, bool)
    _paint(out, b, grow)
    return out


def _paint(out: np.ndarray, b: Blob, grow: int = 0) -> None:
    """OR the blob's (dilated) mask into ``out`` in place, working on a local crop."""
    y0, x0, y1, x1 = b.bbox
    if not grow:
        out[y0:y1, x0:x1] |= b.mask
        return
    h, w = out.shape
    local = np.pad(b.mask, grow)
    local = ndimage.binary_dilation(local, iterations=grow)
    ly0, lx0 = y0 - grow, x0 - grow
    cy0, cx0 = max(0, ly0), max(0, lx0)
    cy1, cx1 = min(h, y1 + grow), min(w, x1 + grow)
    out[cy0:cy1, cx0:cx1] |= local[cy0 - ly0 : cy1 - ly0, cx0 - lx0 : cx1 - lx0]


class SyntheticJudge:
    """A judge for the synthetic world implementing the ``Judge`` protocol."""

    judge_id = "synthetic-judge-v1"
    work = "cpu"  # looks at pixels in Python and numpy: worth a process per core
    prompt_version = "synthetic-judge-prompt-v1"

    def __init__(self, noise: float = 1.0) -> None:
        if not 0.0 <= noise <= 3.0:
            raise ValueError(f"noise must be in [0, 3], got {noise!r}")
        self.noise = float(noise)
        self.vision = Vision()
        if self.noise != 1.0:  # provenance: a judge with other noise is another judge
            self.judge_id = f"synthetic-judge-v1-noise{self.noise:g}"

    # ------------------------------------------------------------ protocol
    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Yes iff the image shows what the prompt asks: every object, none clipped, no extra."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return [self._plausible(im, p) for im, p in zip(images, prompts, strict=True)]

    def prefilter(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[PrefilterAnswer]:
        """Cheap, lenient check: rough scores, unwanted modifications?, aesthetics OK?"""
        check_triplet_lengths(sources, edits, instructions)
        cache: dict[int, Percept] = {}
        out = []
        for s, e, t in zip(sources, edits, instructions, strict=True):
            a = self._safe_assess(s, e, t, cache, cheap=True)
            if isinstance(a, str):
                out.append(PrefilterAnswer(Scores(1.0, 1.0, error=a), True, False, error=a))
                continue
            unwanted = a.collateral > 0 or a.drift >= 6 or a.artifacts >= 2
            aes_ok = a.aesthetic >= 3.0
            details = {
                "changed_fraction": round(a.changed_fraction, 5),
                "drift": round(a.drift, 2),
                "collateral": float(a.collateral),
                "artifacts": float(a.artifacts),
            }
            adh = round(min(5.0, max(1.0, a.adherence if a.adherence < 4.99 else 4.8)), 2)
            out.append(
                PrefilterAnswer(
                    Scores(adh, round(max(1.0, a.aesthetic), 2)),
                    unwanted_changes=bool(unwanted),
                    aesthetic_ok=bool(aes_ok),
                    details=details,
                )
            )
        return out

    def score(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[Scores]:
        """The hard validator: (InstructionAdherence, ImageAesthetic) on 1–5."""
        return self._scored(
            sources, edits, instructions, "judge", lambda e, a, rng, c: Scores(*self._noisy(a, rng))
        )

    def _scored(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
        tag: str,
        make: Callable[[Image.Image, Assessment, np.random.Generator, dict[int, Percept]], Scores],
    ) -> list[Scores]:
        """Full assessments of each triplet turned into scores by ``make`` (given the
        edit, the assessment, a generator seeded by ``tag`` and the triplet, and the
        batch's percept cache); an image that cannot be assessed gets an error verdict."""
        check_triplet_lengths(sources, edits, instructions)
        cache: dict[int, Percept] = {}
        out = []
        for s, e, t in zip(sources, edits, instructions, strict=True):
            a = self._safe_assess(s, e, t, cache, cheap=False)
            if isinstance(a, str):
                out.append(Scores(1.0, 1.0, error=a))
                continue
            rng = np.random.default_rng(derive_seed(tag, _fingerprint(s), _fingerprint(e), t))
            out.append(make(e, a, rng, cache))
        return out

    # ------------------------------------------------------------ helpers
    def _noisy(self, a: Assessment, rng: np.random.Generator) -> tuple[float, float]:
        k = self.noise

        lenient = a.adherence >= 3.0 and a.aesthetic >= 4.0 and float(rng.random()) < 0.02 * k
        if lenient:  # now and then it waves a near miss through, as real validators do
            return round(float(rng.uniform(4.7, 4.95)), 2), round(float(rng.uniform(4.7, 5.0)), 2)

        def one(base: float) -> float:
            if base >= 4.99:
                if rng.random() < 0.04 * k:
                    return float(rng.uniform(3.9, 4.65))
                return 5.0 - abs(float(rng.normal(0.0, 0.1 * k)))
            return float(np.clip(base + rng.normal(0.0, 0.25 * k), 1.0, 5.0))

        return round(one(a.adherence), 2), round(one(a.aesthetic), 2)

    def _percept(self, image: Image.Image, cache: dict[int, Percept], work_long: int) -> Percept:
        key = id(image)
        if key not in cache:
            cache[key] = self.vision.perceive(image, work_long)
        return cache[key]

    def _safe_assess(
        self,
        source: object,
        edit: object,
        text: object,
        cache: dict[int, Percept],
        cheap: bool,
    ) -> Assessment | str:
        if not isinstance(source, Image.Image) or not isinstance(edit, Image.Image):
            return "source and edit must be PIL images"
        if min(source.size) < MIN_SIDE or min(edit.size) < MIN_SIDE:
            return f"image too small to judge (sides must be >= {MIN_SIDE} px)"
        try:
            instr = parse_instruction(str(text))
        except ValueError:
            return "unparseable instruction"
        try:
            if source.mode != "RGB":
                source = source.convert("RGB")
            if edit.size != source.size:
                edit = edit.resize(source.size, Image.Resampling.NEAREST)
            if edit.mode != "RGB":
                edit = edit.convert("RGB")
            work = PREFILTER_LONG if cheap else WORK_LONG
            ps = self._percept(source, cache, work)
            pe = self._percept(edit, cache, work)
            return self._assess(source, edit, instr, ps, pe, cheap)
        except Exception as err:  # never raise on odd pixels: answer with an error
            return f"judge failed: {type(err).__name__}: {err}"

    # ------------------------------------------------------------ plausibility
    def _plausible(self, image: object, prompt: object) -> YesNo:
        if not isinstance(image, Image.Image) or min(image.size) < MIN_SIDE:
            return YesNo(False, error="not an image the judge can read")
        try:
            spec = parse_prompt(str(prompt))
        except ValueError:
            return YesNo(False, error="unparseable prompt")
        try:
            p = self.vision.perceive(image)
        except Exception as err:
            return YesNo(False, error=f"judge failed: {type(err).__name__}: {err}")
        issues = []
        wanted = {o.colour: o for o in spec.objects}
        for o in spec.objects:
            found = [b for b in p.objects if b.colour == o.colour]
            if not found:
                issues.append(f"missing {o.colour} {o.kind}")
                continue
            if len(found) > 1:
                issues.append(f"more than one {o.colour} object")
            b = max(found, key=lambda x: x.area)
            if b.clipped:
                issues.append(f"{o.colour} {o.kind} cut off by the border")
            elif b.kind != o.kind and b.kind_margin > 0.3 and b.diam * p.short >= 10:
                issues.append(f"{o.colour} {b.kind} instead of {o.kind}")
        for b in p.blobs:
            if b.colour is not None and b.colour not in wanted:
                issues.append(f"unexpected {b.colour} {b.kind}")
            elif b.colour is None and b.area >= 0.003 * p.short**2:
                issues.append("unexpected blob")
        if p.bg_top != spec.background:
            issues.append(f"background looks like {p.bg_top}, not {spec.background}")
        # an imperfect VLM: now and then it overlooks a single flaw or imagines one
        rng = np.random.default_rng(derive_seed("gate", _fingerprint(image), prompt))
        u = float(rng.random())
        if len(issues) == 1 and u < 0.06 * self.noise:
            return YesNo(True, reason="all requested objects present and whole")
        if not issues and u < 0.02 * self.noise:
            return YesNo(False, reason="the picture looks unnatural")
        if issues:
            return YesNo(False, reason="; ".join(issues))
        return YesNo(True, reason="all requested objects present and whole")

    # ------------------------------------------------------------ assessment
    def _assess(
        self,
        s_img: Image.Image,
        e_img: Image.Image,
        instr: Instruction,
        ps: Percept,
        pe: Percept,
        cheap: bool,
    ) -> Assessment:
        h, w = ps.arr.shape[:2]
        short = min(h, w)
        drift_vec = pe.offset - ps.offset
        drift = float(np.abs(drift_vec).max())
        diff = max3(np.abs(pe.arr - ps.arr - drift_vec.round().astype(np.int16)))
        changed = diff > CHANGE_LEVEL
        n_changed = int(changed.sum())
        frac = n_changed / changed.size
        aes_pen = _drift_penalty(drift)
        if n_changed < max(3, 0.0004 * h * w) and float((diff > 3).mean()) < 0.002:
            return Assessment(1.0, 5.0 - aes_pen, "no visible change", frac, drift)
        types = [e.type for e in instr.edits]
        global_edit = "style" in types
        entries, gones, missing = self._expect(ps, instr)
        if missing:
            return Assessment(2.0, 5.0 - aes_pen, f"no {missing} in the source", frac, drift)
        solid = [b for b in pe.blobs if b.solid]
        free_blobs = list(solid)

        def take(pred: object) -> Blob | None:
            for b in free_blobs:
                if pred(b):  # type: ignore[operator]
                    free_blobs.remove(b)
                    return b
            return None

        tol = max(2.5 / short, 0.02)
        lo, hi = 0.85, 1.18
        if global_edit:  # a restyle may re-quantise every edge (pixel blocks)
            tol, lo, hi = 0.04, 0.8, 1.25
        block = 1
        if "resize" in types or "replace" in types:
            block = max(self.vision.pixel_block(s_img), self.vision.pixel_block(e_img))
        block = block * ps.stride if block > 1 else 1

        def size_tol(src: Blob) -> float:
            return 0.07 + (0.5 * block / ps.stride / max(1.0, src.diam * short) if block > 1 else 0)

        def region_changed(b: Blob) -> float:
            y0, x0, y1, x1 = b.bbox
            return float(changed[y0:y1, x0:x1][b.mask].mean())

        for ent in sorted(entries, key=lambda x: x.edit is not None):
            src = ent.src
            if ent.mode == "exact" and src is not None:
                ent.match = take(
                    lambda b, src=src: (
                        b.colour == src.colour
                        and abs(b.cx - src.cx) <= tol
                        and abs(b.cy - src.cy) <= tol
                        and lo <= b.diam / max(src.diam, 1e-6) <= hi
                        and (global_edit or region_changed(src) < 0.02)
                    )
                )
            elif ent.mode == "near" and src is not None:
                ent.match = take(
                    lambda b, ent=ent, src=src: (
                        b.colour == ent.colour
                        and _overlap(b, src) > 0.8
                        and 0.85 <= b.diam / max(src.diam, 1e-6) <= 1.18
                        and b.kind == src.kind
                    )
                )
            elif ent.mode in ("cell", "resize") and src is not None:
                ent.match = take(
                    lambda b, ent=ent, src=src: (
                        b.colour == ent.colour
                        and b.cell == src.cell
                        and (ent.kind is None or b.kind == ent.kind)
                        and (ent.size is None or b.size == ent.size)
                        and abs(np.log(b.diam / max(src.diam, 1e-6) / ent.ratio)) < size_tol(src)
                        and (
                            ent.mode != "resize"
                            or abs(np.log(np.sqrt(b.area / max(src.area, 1)) / ent.ratio))
                            < size_tol(src)
                        )
                    )
                )
            else:
                ent.match = take(
                    lambda b, ent=ent: (
                        b.colour == ent.colour
                        and (ent.kind is None or b.kind == ent.kind)
                        and (ent.size is None or b.size == ent.size)
                        and (ent.cell is None or b.cell == ent.cell)
                        and (ent.src is None or 0.85 <= b.diam / max(ent.src.diam, 1e-6) <= 1.18)
                    )
                )
        n = len(instr.edits)
        status = [1.0] * n
        for i, e in enumerate(instr.edits):
            if e.type == "background":
                hits = (pe.bg_top == e.background) + (pe.bg_bottom == e.background)
                status[i] = hits / 2
            elif e.type == "style" and not cheap:
                halves = [self.vision.style_options(e_img, pe, x) for x in ("left", "right")]
                status[i] = sum(e.style in x for x in halves) / 2
        flawed_marks = 0
        # partly done edits: the target's place changed, but not into the right thing
        for ent in entries:
            if ent.edit is None or ent.match is not None:
                continue
            part = 0.0
            if ent.src is not None and ent.mode != "free":
                part = 0.5 if region_changed(ent.src) > 0.15 else 0.0
            else:
                near = [
                    b
                    for b in pe.blobs
                    if not b.solid
                    and b.colour == ent.colour
                    and (ent.cell is None or b.cell == ent.cell)
                ]
                part = 0.5 if near else 0.0
            status[ent.edit] = min(status[ent.edit], part)
        # traces left where objects were removed or moved from
        matched_masks = np.zeros((h, w), bool)
        for ent in entries:
            if ent.match is not None:
                _paint(matched_masks, ent.match, grow=1)
        for src, i, removal in gones:
            region = _mask_in((h, w), src) & ~matched_masks
            if removal and any(
                b.colour == src.colour and _overlap(b, src) > 0.5 for b in free_blobs
            ):
                status[i] = 0.0
                continue
            if region.sum() < 3:
                continue
            resid = (pe.arr[region] - pe.expected[region]).mean(axis=0)
            if float(np.linalg.norm(resid)) > 12:
                status[i] = min(status[i], 0.5)
                flawed_marks += 1
        # collateral: untouched objects that changed, things nobody asked for
        collateral = sum(1 for ent in entries if ent.edit is None and ent.match is None)
        allowed = np.zeros((h, w), bool)
        for ent in entries:
            if ent.edit is not None:
                if ent.src is not None:
                    _paint(allowed, ent.src, grow=2)
                if ent.match is not None:
                    _paint(allowed, ent.match, grow=2)
        for src, _i, _r in gones:
            _paint(allowed, src, grow=2)
        artifacts = 0
        for b in free_blobs:  # solid, unexplained
            if allowed[b.bbox[0] : b.bbox[2], b.bbox[1] : b.bbox[3]].mean() > 0.5:
                flawed_marks += 1
            else:
                collateral += 1
        src_boxes = [b for b in ps.blobs]
        for b in pe.blobs:
            if b.solid:
                continue
            inside = allowed[b.bbox[0] : b.bbox[2], b.bbox[1] : b.bbox[3]].mean() > 0.3
            old = any(_overlap(b, sb) > 0.5 and sb.colour == b.colour for sb in src_boxes)
            if inside:
                flawed_marks += 1
            elif b.colour is None and not old:
                artifacts += 1
            elif not old:
                collateral += 1
        if "background" not in types and (pe.bg_top != ps.bg_top or pe.bg_bottom != ps.bg_bottom):
            collateral += 1
        if not global_edit and "background" not in types:
            # changed pixels nobody asked for, not already explained by objects
            known = np.zeros((h, w), bool)
            for b in pe.blobs + ps.blobs:
                _paint(known, b, grow=1)
            stray = changed & ~allowed & ~known
            if stray.sum() >= max(6, 0.0015 * short * short):
                artifacts = max(artifacts, 1)
        if all(x == 1.0 for x in status):
            adh = 5.0 if collateral == 0 else max(2.5, 4.0 - 0.5 * (collateral - 1))
            reason = "edit done" if collateral == 0 else f"edit done, {collateral} unwanted changes"
        else:
            mean = sum(status) / n
            if mean > 0:
                adh = max(1.5, min(4.0, 1.0 + 4.0 * mean) - 0.5 * collateral)
                reason = "edit only partly done"
            else:
                adh, reason = 1.5, "the requested change is not there"
        aes = 5.0 - aes_pen
        if artifacts:
            aes -= min(2.5, 1.2 + 0.4 * (artifacts - 1))
        if flawed_marks or any(x == 0.5 for x in status):
            aes -= 0.5
        return Assessment(adh, max(1.0, aes), reason, frac, drift, collateral, artifacts, status)

    def _expect(
        self, ps: Percept, instr: Instruction
    ) -> tuple[list[_Entry], list[tuple[Blob, int, bool]], str | None]:
        """Entries the output should show, places that should be cleared, missing target."""
        entries = [
            _Entry(b.colour, b.kind, b.size, b.cell, "exact", b)
            for b in ps.objects
            if b.colour is not None
        ]
        gones: list[tuple[Blob, int, bool]] = []
        for i, e in enumerate(instr.edits):
            if e.type in ("background", "style"):
                continue
            if e.type == "add":
                entries.append(_Entry(e.colour or "", e.kind, e.size, e.cell, "free", None, i))
                continue
            ent = _find(entries, e)
            if ent is None:
                assert e.target
                return entries, gones, f"{e.target[0]} {e.target[1]}"
            if e.type == "remove":
                entries.remove(ent)
                if ent.src is not None and ent.mode != "free":
                    gones.append((ent.src, i, True))
                continue
            if e.type == "recolour":
                ent.colour = e.colour or ent.colour
                ent.mode = "near" if ent.mode == "exact" else ent.mode
            elif e.type == "replace":
                if ent.src is not None and ent.mode != "free":
                    gones.append((ent.src, i, False))
                    ent.mode = "cell"
                ent.colour, ent.kind = e.colour or ent.colour, e.kind or ent.kind
                if e.size:
                    old = ent.size or "medium"
                    ent.ratio = SIZE_FRACTION[e.size] / SIZE_FRACTION[old]
                ent.size = e.size or ent.size
            elif e.type == "resize":
                old = ent.size or "medium"
                new = resize_target(old, e)
                ent.ratio *= SIZE_FRACTION[new] / SIZE_FRACTION[old]
                ent.size = new
                if ent.mode != "free":
                    ent.mode = "resize"
            elif e.type == "move":
                if ent.src is not None and ent.mode != "free":
                    gones.append((ent.src, i, False))
                ent.cell = e.cell
                ent.mode = "free"
            ent.edit = i
        return entries, gones, None


def _find(entries: list[_Entry], e: Edit) -> _Entry | None:
    """The entry an edit refers to: by colour and kind, or by colour alone (unique)."""
    assert e.target
    colour, kind = e.target
    same = [x for x in entries if x.colour == colour and x.kind == kind]
    if same:
        return same[0]
    by_colour = [x for x in entries if x.colour == colour]
    return by_colour[0] if len(by_colour) == 1 else None


VIESCORE_RANGE = 10  # the 0..R scale of VIEScore and GEdit-Bench


def _score(x: float) -> float:
    """A 0–10 sub-score as VIEScore models answer it: a whole number."""
    return float(min(VIESCORE_RANGE, max(0, round(x))))


class SyntheticVIEScoreJudge(SyntheticJudge):
    """The synthetic judge answering in VIEScore's shape (GEdit-Bench's protocol).

    SC comes from the source and the edited image with the instruction: two 0–10
    scores, edit success (how much of the instruction is carried out) and over-editing
    (10: nothing else changed), SC = min of the two. PQ comes from the edited image
    alone: naturalness (a global colour cast costs) and artifacts (off-palette blotches,
    ghosts and half-done objects cost), PQ = min of the two. O = √(SC·PQ). Sub-scores
    are whole numbers with seeded noise, as a VLM answers them. The verdict's scores are
    SC and PQ on the validator's 1–5 scale (1 + 0.4·x); ``details`` holds the four
    sub-scores, ``sc``, ``pq``, ``overall``, ``score_range`` and the score lists, as the
    remote VIEScore judge's verdicts hold them (``nhr.backends.judge_viescore``).
    """

    judge_id = "synthetic-viescore-v1"
    prompt_version = "synthetic-viescore-prompt-v1"

    def __init__(self, noise: float = 1.0) -> None:
        super().__init__(noise)
        self.judge_id = (
            "synthetic-viescore-v1"
            if self.noise == 1.0
            else f"synthetic-viescore-v1-noise{noise:g}"
        )

    def score(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[Scores]:
        """SC and PQ calls in one: see the class docstring."""
        return self._scored(sources, edits, instructions, "viescore", self._viescore)

    def _viescore(
        self,
        e: Image.Image,
        a: Assessment,
        rng: np.random.Generator,
        cache: dict[int, Percept],
    ) -> Scores:
        """One triplet's SC and PQ sub-scores, noisy as a VLM's, as a verdict."""
        success = 10.0 * (sum(a.statuses) / len(a.statuses) if a.statuses else 0.0)
        over = 10.0 - 3.0 * a.collateral
        natural, clean = self._quality(e, cache)
        subs = {
            "edit_success": success,
            "over_editing": over,
            "naturalness": natural,
            "artifacts": clean,
        }
        subs = {k: _score(v + rng.normal(0.0, 0.6 * self.noise)) for k, v in subs.items()}
        sc = min(subs["edit_success"], subs["over_editing"])
        pq = min(subs["naturalness"], subs["artifacts"])
        details = {
            "judge_style": "viescore",
            "score_range": VIESCORE_RANGE,
            **subs,
            "sc": sc,
            "pq": pq,
            "overall": round(float(np.sqrt(sc * pq)), 4),
            "sc_scores": [subs["edit_success"], subs["over_editing"]],
            "pq_scores": [subs["naturalness"], subs["artifacts"]],
            "sc_reasoning": a.reason,
        }
        return Scores(round(1 + 0.4 * sc, 4), round(1 + 0.4 * pq, 4), details=details)

    def _quality(self, edit: Image.Image, cache: dict[int, Percept]) -> tuple[float, float]:
        """(naturalness, artifacts) on 0–10 from the edited image alone."""
        p = self._percept(edit.convert("RGB") if edit.mode != "RGB" else edit, cache, WORK_LONG)
        cast = float(np.abs(p.offset).max())
        natural = 10.0 - (2.5 * _drift_penalty(cast) if cast >= 4 else 0.0)
        minimum = 0.002 * p.short**2
        blotches = sum(1 for b in p.blobs if b.colour is None and b.area >= minimum)
        damaged = sum(1 for b in p.blobs if b.colour is not None and not b.solid)
        return natural, 10.0 - 3.0 * blotches - 1.5 * damaged
