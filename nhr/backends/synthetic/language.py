"""The world's grammar: writing and parsing T2I prompts and edit instructions.

Prompts describe a :class:`SceneSpec`; instructions are one or more :class:`Edit` s. Every
edit type has several phrasings (``PHRASINGS``); :func:`parse_instruction` reads them all
back, and compound instructions join edits with "and then", ", then", "first ..., then".
Objects are named by colour and kind ("the red circle"), which is unambiguous because a
scene never holds two objects of one colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from .scene import BACKGROUNDS, CELLS, COLOURS, KINDS, SIZES, STYLES

EDIT_TYPES: tuple[str, ...] = (
    "add",
    "remove",
    "replace",
    "recolour",
    "resize",
    "move",
    "background",
    "style",
    "compound",
)
SIMPLE_TYPES: tuple[str, ...] = EDIT_TYPES[:-1]


@dataclass(frozen=True)
class ObjSpec:
    """An object as a prompt describes it."""

    kind: str
    colour: str
    size: str
    cell: str


@dataclass(frozen=True)
class SceneSpec:
    """A scene as a prompt describes it."""

    style: str
    background: str
    objects: tuple[ObjSpec, ...]


@dataclass(frozen=True)
class Edit:
    """One simple edit. ``target`` is (colour, kind) of an existing object.

    ``kind``/``colour``/``size``/``cell`` give the new object's attributes (add, replace,
    recolour, absolute resize, move); ``delta`` is ±1 for relative resizes; ``None``
    means "not specified" (the editor chooses, any value is correct).
    """

    type: str
    target: tuple[str, str] | None = None
    kind: str | None = None
    colour: str | None = None
    size: str | None = None
    cell: str | None = None
    delta: int = 0
    background: str | None = None
    style: str | None = None


@dataclass(frozen=True)
class Instruction:
    """A parsed instruction: one edit, or several for a compound instruction."""

    edits: tuple[Edit, ...]

    @property
    def edit_type(self) -> str:
        """The edit type: the single edit's type, or "compound"."""
        return self.edits[0].type if len(self.edits) == 1 else "compound"


# ---------------------------------------------------------------- phrases
SIZE_WORD = {"small": "small", "medium": "medium-sized", "large": "large"}
_SIZE_PARSE = {
    "small": "small",
    "little": "small",
    "tiny": "small",
    "medium-sized": "medium",
    "medium": "medium",
    "large": "large",
    "big": "large",
}
AT_CELL: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left corner", "in the upper left"),
    "top": ("at the top", "at the top center", "along the top"),
    "top right": ("at the top right", "in the top right corner", "in the upper right"),
    "left": ("on the left", "on the left side", "at the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "on the right side", "at the right side"),
    "bottom left": ("at the bottom left", "in the bottom left corner", "in the lower left"),
    "bottom": ("at the bottom", "at the bottom center", "along the bottom"),
    "bottom right": ("at the bottom right", "in the bottom right corner", "in the lower right"),
}
TO_CELL: dict[str, tuple[str, ...]] = {
    "top left": ("to the top left", "to the top left corner", "to the upper left"),
    "top": ("to the top", "to the top center", "up to the top"),
    "top right": ("to the top right", "to the top right corner", "to the upper right"),
    "left": ("to the left", "to the left side", "over to the left"),
    "center": ("to the center", "to the middle", "into the middle"),
    "right": ("to the right", "to the right side", "over to the right"),
    "bottom left": ("to the bottom left", "to the bottom left corner", "to the lower left"),
    "bottom": ("to the bottom", "to the bottom center", "down to the bottom"),
    "bottom right": ("to the bottom right", "to the bottom right corner", "to the lower right"),
}

PHRASINGS: dict[str, tuple[str, ...]] = {
    "add": (
        "add {new}",
        "put {new}",
        "place {new}",
        "insert {new}",
        "draw {new}",
        "include {new} in the picture",
    ),
    "remove": (
        "remove {obj}",
        "delete {obj}",
        "get rid of {obj}",
        "erase {obj} from the picture",
        "take out {obj}",
        "make {obj} disappear",
    ),
    "replace": (
        "replace {obj} with {new}",
        "swap {obj} for {new}",
        "turn {obj} into {new}",
        "change {obj} into {new}",
        "exchange {obj} for {new}",
    ),
    "recolour": (
        "make {obj} {colour}",
        "paint {obj} {colour}",
        "recolour {obj} {colour}",
        "change the colour of {obj} to {colour}",
        "turn {obj} {colour}",
        "colour {obj} {colour}",
    ),
    "resize": (
        "make {obj} {size}",
        "resize {obj} to {size}",
        "change the size of {obj} to {size}",
    ),
    "resize+": ("make {obj} bigger", "make {obj} larger", "enlarge {obj}", "scale {obj} up"),
    "resize-": (
        "make {obj} smaller",
        "shrink {obj}",
        "scale {obj} down",
        "reduce the size of {obj}",
    ),
    "move": (
        "move {obj} {to}",
        "shift {obj} {to}",
        "drag {obj} {to}",
        "relocate {obj} {to}",
        "put {obj} {at}",
    ),
    "background": (
        "change the background to {bg}",
        "replace the background with {bg}",
        "make the background {bg}",
        "switch the background to {bg}",
        "set the scene on {bg}",
    ),
    "style": (
        "make it {style}-style",
        "redraw the picture in {style} style",
        "convert the image to {style} style",
        "render everything in {art} {style} style",
    ),
    "compound": ("{a} and then {b}", "{a}, then {b}", "first {a}, then {b}"),
}
PROMPT_INTROS = (
    "{art} {style}-style picture of",
    "{art} {style}-style illustration of",
    "An image in {style} style showing",
    "{art} {style} drawing of",
)
PROMPT_BACKGROUNDS = (
    "on {art} {bg} background",
    "against {art} {bg}",
    "set on {art} {bg}",
    "with {art} {bg} behind",
)


def article(word: str) -> str:
    """'a' or 'an' before ``word``."""
    return "an" if word[:1] in "aeiou" else "a"


def new_phrase(kind: str, colour: str, size: str | None, cell: str | None, variant: int = 0) -> str:
    """'a small green star at the top right' (size and cell optional)."""
    words = [SIZE_WORD[size]] if size else []
    words += [colour, kind]
    text = f"{article(words[0])} {' '.join(words)}"
    if cell:
        text += " " + AT_CELL[cell][variant % len(AT_CELL[cell])]
    return text


def bg_phrase(name: str) -> str:
    """'a night sky'."""
    return f"{article(name)} {name}"


# ---------------------------------------------------------------- writing
def write_prompt(scene: SceneSpec, rng: np.random.Generator) -> str:
    """A T2I prompt describing ``scene``, phrased at random."""
    parts = [
        new_phrase(o.kind, o.colour, o.size, o.cell, int(rng.integers(3))) for o in scene.objects
    ]
    if len(parts) == 1:
        listing = parts[0]
    else:
        listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    intro = PROMPT_INTROS[int(rng.integers(len(PROMPT_INTROS)))].format(
        art=article(scene.style).capitalize(), style=scene.style
    )
    tail = PROMPT_BACKGROUNDS[int(rng.integers(len(PROMPT_BACKGROUNDS)))].format(
        art=article(scene.background), bg=scene.background
    )
    return f"{intro} {listing}, {tail}."


def write_edit(edit: Edit, phrasing: int = 0, variant: int = 0) -> str:
    """One simple edit as text; ``phrasing`` picks the template, ``variant`` the cell wording."""
    obj = f"the {edit.target[0]} {edit.target[1]}" if edit.target else ""
    t = edit.type
    key = t
    if t == "resize" and edit.size is None:
        key = "resize+" if edit.delta > 0 else "resize-"
    templates = PHRASINGS[key]
    tpl = templates[phrasing % len(templates)]
    if t == "add":
        assert edit.kind and edit.colour
        new = new_phrase(edit.kind, edit.colour, edit.size, edit.cell, variant)
        return tpl.format(new=new)
    if t == "remove":
        return tpl.format(obj=obj)
    if t == "replace":
        assert edit.kind and edit.colour
        return tpl.format(obj=obj, new=new_phrase(edit.kind, edit.colour, edit.size, None))
    if t == "recolour":
        return tpl.format(obj=obj, colour=edit.colour)
    if t == "resize":
        return tpl.format(obj=obj, size=SIZE_WORD[edit.size] if edit.size else "")
    if t == "move":
        assert edit.cell
        return tpl.format(
            obj=obj,
            to=TO_CELL[edit.cell][variant % 3],
            at=AT_CELL[edit.cell][variant % 3],
        )
    if t == "background":
        assert edit.background
        return tpl.format(bg=bg_phrase(edit.background))
    if t == "style":
        assert edit.style
        return tpl.format(style=edit.style, art=article(edit.style))
    raise ValueError(f"unknown edit type {t!r}")


def write_instruction(instruction: Instruction, rng: np.random.Generator) -> str:
    """An instruction's text with random phrasings."""
    texts = [
        write_edit(e, int(rng.integers(1000)), int(rng.integers(3))) for e in instruction.edits
    ]
    if len(texts) == 1:
        return texts[0]
    tpl = PHRASINGS["compound"][int(rng.integers(len(PHRASINGS["compound"])))]
    head = texts[0]
    for nxt in texts[1:-1]:
        head = f"{head}, then {nxt}"
    return tpl.format(a=head, b=texts[-1])


# ---------------------------------------------------------------- parsing
def _alt(words: object) -> str:
    return "|".join(sorted((re.escape(str(w)) for w in words), key=len, reverse=True))  # type: ignore[attr-defined]


_C = _alt(COLOURS)
_K = _alt(KINDS)
_S = _alt(_SIZE_PARSE)
_BG = _alt(BACKGROUNDS)
_ST = _alt(STYLES)
_CELL_WORDS = {
    "top left": "top left",
    "upper left": "top left",
    "top right": "top right",
    "upper right": "top right",
    "bottom left": "bottom left",
    "lower left": "bottom left",
    "bottom right": "bottom right",
    "lower right": "bottom right",
    "top": "top",
    "bottom": "bottom",
    "left": "left",
    "right": "right",
    "center": "center",
    "centre": "center",
    "middle": "center",
}
_POS = (
    rf"(?:(?:up|down|over) )?(?:at|in|on|to|into|along) the ({_alt(_CELL_WORDS)})"
    r"(?: (?:corner|side|center|centre|edge))?"
)
_OBJ = rf"the ({_C}) ({_K})"
_NEW = rf"an? (?:({_S}) )?({_C}) ({_K})"
_PIC = r"(?: (?:from|in|to) the (?:picture|image|scene))?"

_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("remove", rf"^(?:remove|delete|erase|take out|get rid of) {_OBJ}{_PIC}$"),
        ("remove", rf"^make {_OBJ} (?:disappear|vanish)$"),
        ("move", rf"^(?:move|shift|drag|relocate|put|place) {_OBJ} {_POS}$"),
        ("add", rf"^(?:add|put|place|insert|draw|include) {_NEW}(?: {_POS})?{_PIC}$"),
        ("replace", rf"^replace {_OBJ} with {_NEW}$"),
        ("replace", rf"^(?:swap|exchange) {_OBJ} for {_NEW}$"),
        ("replace", rf"^(?:turn|change) {_OBJ} into {_NEW}$"),
        ("recolour", rf"^(?:make|paint|recolou?r|colou?r|turn) {_OBJ} ({_C})$"),
        ("recolour", rf"^change the colou?r of {_OBJ} to ({_C})$"),
        ("resize", rf"^make {_OBJ} ({_S})$"),
        ("resize", rf"^(?:resize|change the size of) {_OBJ} to (?:be )?({_S})$"),
        ("resize+", rf"^make {_OBJ} (?:bigger|larger)$"),
        ("resize+", rf"^(?:enlarge|grow) {_OBJ}$"),
        ("resize+", rf"^scale {_OBJ} up$"),
        ("resize-", rf"^make {_OBJ} smaller$"),
        ("resize-", rf"^(?:shrink|reduce the size of) {_OBJ}$"),
        ("resize-", rf"^scale {_OBJ} down$"),
        (
            "background",
            rf"^(?:(?:change|switch|set) the background to|replace the background with"
            rf"|make the background|set the scene on) (?:an? )?({_BG})$",
        ),
        (
            "style",
            rf"^(?:make it(?: look)?|redraw (?:it|the picture|the image) in"
            rf"|convert (?:it|the picture|the image) to|render (?:it|everything) in)"
            rf" (?:an? )?({_ST})[- ]style$",
        ),
    )
)
_SPLIT = re.compile(r"(?:,? and then |, then |; then |; after that,? |\. then )")


def _normalise(text: str) -> str:
    text = " ".join(str(text).lower().replace("colored", "coloured").split())
    return text.strip(" .!;,")


def parse_edit(text: str) -> Edit:
    """Parse one simple edit; raise ``ValueError`` if it is not in the grammar."""
    t = _normalise(text)
    for name, rule in _RULES:
        m = rule.match(t)
        if not m:
            continue
        g = m.groups()
        if name == "remove":
            return Edit("remove", target=(g[0], g[1]))
        if name == "move":
            return Edit("move", target=(g[0], g[1]), cell=_CELL_WORDS[g[2]])
        if name == "add":
            size = _SIZE_PARSE[g[0]] if g[0] else None
            cell = _CELL_WORDS[g[3]] if g[3] else None
            return Edit("add", kind=g[2], colour=g[1], size=size, cell=cell)
        if name == "replace":
            size = _SIZE_PARSE[g[2]] if g[2] else None
            return Edit("replace", target=(g[0], g[1]), kind=g[4], colour=g[3], size=size)
        if name == "recolour":
            return Edit("recolour", target=(g[0], g[1]), colour=g[2])
        if name == "resize":
            return Edit("resize", target=(g[0], g[1]), size=_SIZE_PARSE[g[2]])
        if name in ("resize+", "resize-"):
            return Edit("resize", target=(g[0], g[1]), delta=1 if name == "resize+" else -1)
        if name == "background":
            return Edit("background", background=g[0])
        if name == "style":
            return Edit("style", style=g[0])
    raise ValueError(f"instruction not in the synthetic grammar: {text!r}")


def parse_instruction(text: str) -> Instruction:
    """Parse an instruction (simple or compound); raise ``ValueError`` if unparseable."""
    t = _normalise(text)
    if t.startswith("first "):
        t = t[len("first ") :]
    parts = [p for p in _SPLIT.split(t) if p.strip()]
    return Instruction(tuple(parse_edit(p) for p in parts))


def parse_prompt(text: str) -> SceneSpec:
    """Read a scene back from a prompt written by :func:`write_prompt`."""
    t = _normalise(text)
    st = re.search(rf"\b({_ST})\b", t)
    bg = re.search(rf"\b({_BG})\b", t)
    if not st or not bg:
        raise ValueError(
            f"prompt not in the synthetic grammar (needs a style and a background): {text!r}"
        )
    obj_re = re.compile(rf"\b{_NEW}\b")
    matches = list(obj_re.finditer(t))
    objects = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(t)
        seg = t[m.end() : end]
        pos = re.search(_POS, seg)
        size = _SIZE_PARSE[m.group(1)] if m.group(1) else "medium"
        cell = _CELL_WORDS[pos.group(1)] if pos else "center"
        objects.append(ObjSpec(m.group(3), m.group(2), size, cell))
    if not objects:
        raise ValueError(f"prompt names no object of the synthetic world: {text!r}")
    return SceneSpec(st.group(1), bg.group(1), tuple(objects))


# ---------------------------------------------------------------- inversion
def invert_edit(edit: Edit, scene: SceneSpec) -> Edit:
    """The edit that undoes ``edit`` on ``scene`` (attributes read from the prompt's scene)."""
    spec = {(o.colour, o.kind): o for o in scene.objects}
    if edit.type == "add":
        assert edit.colour and edit.kind
        return Edit("remove", target=(edit.colour, edit.kind))
    if edit.type == "background":
        return Edit("background", background=scene.background)
    if edit.type == "style":
        return Edit("style", style=scene.style)
    assert edit.target
    old = spec.get(edit.target)
    if old is None:
        raise ValueError(f"the prompt has no {edit.target[0]} {edit.target[1]} to invert from")
    if edit.type == "remove":
        return Edit("add", kind=old.kind, colour=old.colour, size=old.size, cell=old.cell)
    if edit.type == "recolour":
        return Edit("recolour", target=(edit.colour or old.colour, old.kind), colour=old.colour)
    if edit.type == "replace":
        return Edit(
            "replace",
            target=(edit.colour or old.colour, edit.kind or old.kind),
            kind=old.kind,
            colour=old.colour,
            size=old.size,
        )
    if edit.type == "resize":
        return Edit("resize", target=edit.target, size=old.size)
    if edit.type == "move":
        return Edit("move", target=edit.target, cell=old.cell)
    raise ValueError(f"cannot invert edit type {edit.type!r}")


def invert_instruction(text: str, prompt: str, phrasing: int = 0) -> str:
    """The inverse of an instruction, using the source's T2I prompt to keep attributes.

    Compound instructions are inverted edit by edit in reverse order; the result never uses
    the words revert/undo/restore/back.
    """
    instr = parse_instruction(text)
    scene = parse_prompt(prompt)
    current = scene
    # apply forward edits to the scene so later inverses see earlier results
    inverses = []
    for e in instr.edits:
        inverses.append(invert_edit(e, current))
        current = apply_to_spec(current, e)
    inverses.reverse()
    texts = [write_edit(e, phrasing) for e in inverses]
    if len(texts) == 1:
        return texts[0]
    return ", then ".join(texts[:-1]) + " and then " + texts[-1]


def apply_to_spec(scene: SceneSpec, edit: Edit) -> SceneSpec:
    """A prompt scene after ``edit`` (used to chain inverses of compound edits)."""
    objs = list(scene.objects)
    idx = next(
        (i for i, o in enumerate(objs) if edit.target and (o.colour, o.kind) == edit.target),
        None,
    )
    if edit.type == "add" and edit.kind and edit.colour:
        objs.append(ObjSpec(edit.kind, edit.colour, edit.size or "medium", edit.cell or "center"))
    elif edit.type == "background" and edit.background:
        return replace(scene, background=edit.background)
    elif edit.type == "style" and edit.style:
        return replace(scene, style=edit.style)
    elif idx is not None:
        o = objs[idx]
        if edit.type == "remove":
            del objs[idx]
        elif edit.type == "recolour":
            objs[idx] = replace(o, colour=edit.colour or o.colour)
        elif edit.type == "replace":
            objs[idx] = replace(
                o,
                kind=edit.kind or o.kind,
                colour=edit.colour or o.colour,
                size=edit.size or o.size,
            )
        elif edit.type == "resize":
            objs[idx] = replace(o, size=resize_target(o.size, edit))
        elif edit.type == "move":
            objs[idx] = replace(o, cell=edit.cell or o.cell)
    return replace(scene, objects=tuple(objs))


def resize_target(size: str, edit: Edit) -> str:
    """The size class an object of ``size`` should get from a resize edit."""
    if edit.size:
        return edit.size
    i = SIZES.index(size) + edit.delta
    return SIZES[min(max(i, 0), len(SIZES) - 1)]


__all__ = [
    "CELLS",
    "EDIT_TYPES",
    "PHRASINGS",
    "Edit",
    "Instruction",
    "ObjSpec",
    "SceneSpec",
    "invert_instruction",
    "parse_edit",
    "parse_instruction",
    "parse_prompt",
    "write_edit",
    "write_instruction",
    "write_prompt",
]
