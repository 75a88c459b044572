"""The hidden truth of the synthetic world: what every rendered image really depicts.

The renderer and the editor record each image's :class:`Layout` under
``truth_dir/<aa>/<pixelhash>.json``; evaluation reads it back. Nothing else (least of all
the judge) may read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from nhr.store.files import open_files

from .language import Instruction, parse_instruction, resize_target
from .scene import Layout, PlacedObject

POS_TOL = 0.03  # relative position tolerance for objects that should stay put


def pixel_hash(image: Image.Image) -> str:
    """sha256 of mode, size and raw pixels: stable across a lossless PNG round trip."""
    h = hashlib.sha256()
    h.update(image.mode.encode())
    h.update(f"{image.width}x{image.height}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SourceTruth:
    """Whether a rendered source truly depicts its prompt, and its defects if not."""

    plausible: bool
    defects: tuple[str, ...]


@dataclass(frozen=True)
class TripletTruth:
    """The true verdict on (source, instruction, edited): outcome and 1–5 scores."""

    correct: bool
    outcome: str
    adherence: float
    aesthetic: float


class SyntheticTruth:
    """Reads and writes the truth store under ``truth_dir`` (a folder, or an
    object-store URL inside the run folder)."""

    def __init__(self, truth_dir: Path | str) -> None:
        self.files = open_files(truth_dir)
        self.truth_dir = self.files.local_path() or self.files.url

    @staticmethod
    def _rel(digest: str) -> str:
        return f"{digest[:2]}/{digest}.json"

    def record(self, image: Image.Image, layout: Layout) -> str:
        """Store ``layout`` as the truth of ``image`` (atomic write); return the pixel hash."""
        digest = pixel_hash(image)
        data = {"width": image.width, "height": image.height, "layout": layout.to_dict()}
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        self.files.write_bytes(self._rel(digest), text.encode())
        return digest

    def layout(self, image: Image.Image) -> Layout:
        """The layout ``image`` depicts; ``KeyError`` naming the hash if unknown."""
        digest = pixel_hash(image)
        try:
            data = json.loads(self.files.read_bytes(self._rel(digest)))
        except FileNotFoundError:
            raise KeyError(
                f"image {digest} is unknown to the synthetic truth store at {self.truth_dir}: "
                "only images rendered or edited by the synthetic world (sharing this truth_dir) "
                "have a truth, and only if saved losslessly (PNG)"
            ) from None
        return Layout.from_dict(data["layout"])

    def has(self, image: Image.Image) -> bool:
        """Whether ``image`` has a record."""
        return self.files.exists(self._rel(pixel_hash(image)))

    def source(self, image: Image.Image) -> SourceTruth:
        """Whether a rendered source truly depicts its prompt."""
        layout = self.layout(image)
        return SourceTruth(plausible=not layout.defects, defects=layout.defects)

    def triplet(
        self, source_image: Image.Image, instruction: str, edited_image: Image.Image
    ) -> TripletTruth:
        """The true verdict on any (source, instruction, edited) pair of world images."""
        src = self.layout(source_image)
        out = self.layout(edited_image)
        try:
            parsed = parse_instruction(instruction)
        except ValueError:
            return TripletTruth(False, "unparseable", 1.0, aesthetic_of(src, out))
        return judge_layouts(src, parsed, out)


# ---------------------------------------------------------------- comparison
def _near(a: PlacedObject, x: float, y: float, tol: float = POS_TOL) -> bool:
    return abs(a.x - x) <= tol and abs(a.y - y) <= tol


def aesthetic_of(src: Layout, out: Layout) -> float:
    """True aesthetics of ``out`` relative to ``src``: drift, artifacts and traces cost."""
    aes = 5.0
    drift = max(abs(a - b) for a, b in zip(out.drift, src.drift, strict=True))
    if drift >= 4:
        aes -= min(2.5, 0.6 + 0.09 * drift)
    new_arts = [a for a in out.artifacts if a not in src.artifacts]
    if new_arts:
        aes -= min(2.5, 1.2 + 0.4 * (len(new_arts) - 1))
    src_flaws = sum(not o.clean for o in src.objects)
    out_flaws = sum(not o.clean for o in out.objects)
    if out_flaws > src_flaws or (out.old_background and not src.old_background):
        aes -= 0.5
    if out.old_style and not src.old_style:
        aes -= 0.5
    return max(1.0, aes)


@dataclass
class _Expect:
    """One object the instruction asks the output to show (mutable while simulating)."""

    colour: str
    kind: str
    size: str | None
    cell: str | None
    x: float
    y: float
    scale: float
    mode: str  # "exact" (untouched), "near" (same place), "cell" (same cell), "free"
    edit: int | None = None


@dataclass(frozen=True)
class _Gone:
    """An object an edit removed from a place: no trace of it should stay there."""

    colour: str
    kind: str
    x: float
    y: float
    edit: int
    removal: bool  # a plain removal (the object must be gone entirely)


def _matches(r: PlacedObject, e: _Expect) -> bool:
    if not r.clean or r.colour != e.colour or r.kind != e.kind:
        return False
    if e.size is not None and r.size != e.size:
        return False
    if e.mode == "exact":
        return _near(r, e.x, e.y) and abs(r.scale - e.scale) <= 0.02
    if e.mode == "near":
        return _near(r, e.x, e.y)
    return e.cell is None or r.cell == e.cell


def _simulate(src: Layout, instr: Instruction) -> tuple[list[_Expect], list[_Gone]] | None:
    """Apply the edits to the source's objects in order; None if a target is missing."""
    entries = [
        _Expect(o.colour, o.kind, o.size, o.cell, o.x, o.y, o.scale, "exact")
        for o in src.objects
        if o.clean
    ]
    gones: list[_Gone] = []
    for i, e in enumerate(instr.edits):
        if e.type in ("background", "style"):
            continue
        if e.type == "add":
            assert e.kind and e.colour
            entries.append(_Expect(e.colour, e.kind, e.size, e.cell, 0.0, 0.0, 0.0, "free", i))
            continue
        assert e.target
        ent = next((x for x in entries if (x.colour, x.kind) == e.target), None)
        if ent is None:
            return None
        placed = ent.mode in ("exact", "near", "cell")
        if e.type == "remove":
            entries.remove(ent)
            if placed:
                gones.append(_Gone(ent.colour, ent.kind, ent.x, ent.y, i, True))
            continue
        if e.type == "recolour":
            ent.colour = e.colour or ent.colour
            ent.mode = "near" if ent.mode == "exact" else ent.mode
        elif e.type == "replace":
            if placed:
                gones.append(_Gone(ent.colour, ent.kind, ent.x, ent.y, i, False))
            ent.colour, ent.kind = e.colour or ent.colour, e.kind or ent.kind
            ent.size = e.size or ent.size
            ent.mode = "cell" if placed else ent.mode
        elif e.type == "resize":
            ent.size = resize_target(ent.size or "medium", e) if ent.size or e.size else None
            ent.mode = "cell" if placed else ent.mode
        elif e.type == "move":
            if placed:
                gones.append(_Gone(ent.colour, ent.kind, ent.x, ent.y, i, False))
            ent.cell = e.cell
            ent.mode = "free"
        ent.edit = i
    return entries, gones


def judge_layouts(src: Layout, instr: Instruction, out: Layout) -> TripletTruth:
    """Compare the layout an instruction asks for with the one the edit depicts."""
    aes = aesthetic_of(src, out)
    if out.depiction() == src.depiction():
        return TripletTruth(False, "no_change", 1.0, aes)
    sim = _simulate(src, instr)
    if sim is None:
        return TripletTruth(False, "missing_target", 2.0, aes)
    entries, gones = sim
    remaining = list(out.objects)
    matched: dict[int, bool] = {}
    # untouched objects first, then the ones edits produced
    for idx, ent in sorted(enumerate(entries), key=lambda p: p[1].edit is not None):
        hit = _take(remaining, lambda r, ent=ent: _matches(r, ent))
        matched[idx] = hit is not None
    n = len(instr.edits)
    status = [1.0] * n
    for i, e in enumerate(instr.edits):
        if e.type == "background":
            ok = out.background == e.background
            status[i] = (0.5 if out.old_background else 1.0) if ok else 0.0
        elif e.type == "style":
            ok = out.style == e.style
            status[i] = (0.5 if out.old_style else 1.0) if ok else 0.0
    for idx, ent in enumerate(entries):
        if ent.edit is None or matched[idx]:
            continue
        part = _take(
            remaining,
            lambda r, ent=ent: (
                not r.clean
                and (r.colour == ent.colour or r.split_colour == ent.colour or r.kind == ent.kind)
                and (
                    (ent.mode in ("near", "cell") and r.cell == ent.cell)
                    or (ent.mode == "free" and (ent.cell is None or r.cell == ent.cell))
                )
            ),
        )
        status[ent.edit] = min(status[ent.edit], 0.5 if part else 0.0)
    for g in gones:
        still = _take(
            remaining,
            lambda r, g=g: (
                r.clean and r.colour == g.colour and r.kind == g.kind and _near(r, g.x, g.y)
            ),
        )
        if still is not None and g.removal:
            status[g.edit] = 0.0
            continue
        if still is not None:
            remaining.append(still)  # let collateral count it
        ghost = _take(
            remaining,
            lambda r, g=g: (
                not r.clean and r.colour == g.colour and r.kind == g.kind and _near(r, g.x, g.y)
            ),
        )
        if ghost is not None:
            status[g.edit] = min(status[g.edit], 0.5)
    collateral = sum(1 for idx, ent in enumerate(entries) if ent.edit is None and not matched[idx])
    collateral += len(remaining)
    types = {e.type for e in instr.edits}
    if "background" not in types and (
        out.background != src.background or out.old_background != src.old_background
    ):
        collateral += 1
    if "style" not in types and (out.style != src.style or out.old_style != src.old_style):
        collateral += 1
    drift = max(abs(a - b) for a, b in zip(out.drift, src.drift, strict=True)) >= 4
    arts = any(a not in src.artifacts for a in out.artifacts)
    if all(s == 1.0 for s in status):
        if collateral:
            return TripletTruth(False, "collateral", max(2.5, 4.0 - 0.5 * (collateral - 1)), aes)
        if arts:
            return TripletTruth(False, "artifacts", 5.0, aes)
        if drift:
            return TripletTruth(False, "drift", 5.0, aes)
        return TripletTruth(aes >= 4.99, "correct" if aes >= 4.99 else "flawed", 5.0, aes)
    mean = sum(status) / n
    if mean > 0:
        adh = min(4.0, 1.0 + 4.0 * mean) - 0.5 * collateral
        return TripletTruth(False, "partial", max(1.5, adh), aes)
    return TripletTruth(False, "wrong_target", 1.5, aes)


def _take(
    remaining: list[PlacedObject], pred: Callable[[PlacedObject], bool]
) -> PlacedObject | None:
    for r in remaining:
        if pred(r):
            remaining.remove(r)
            return r
    return None
