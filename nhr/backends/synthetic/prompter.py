"""The synthetic prompt writer: scenes, their T2I prompts and consistent instructions."""

from __future__ import annotations

import numpy as np

from nhr.backends.base import Backend, InstructionDraft, PromptDraft, PromptRequest
from nhr.seeds import derive_seed

from .language import (
    Edit,
    Instruction,
    ObjSpec,
    SceneSpec,
    apply_to_spec,
    resize_target,
    write_instruction,
    write_prompt,
)
from .scene import BACKGROUNDS, CELLS, COLOURS, KINDS, MAX_OBJECTS, SIZES, STYLES

TOPICS: tuple[str, ...] = tuple(BACKGROUNDS)
EDIT_WEIGHTS: dict[str, float] = {
    "add": 0.18,
    "remove": 0.2,
    "replace": 0.08,
    "recolour": 0.1,
    "resize": 0.08,
    "move": 0.08,
    "background": 0.05,
    "style": 0.05,
    "compound": 0.18,
}
_OBJECT_COUNTS = (1, 2, 3, 4, 5, 6)
_COUNT_WEIGHTS = (0.12, 0.26, 0.26, 0.18, 0.1, 0.08)


class SyntheticPrompter(Backend):
    """Writes a scene prompt and k distinct, consistent instructions per request."""

    model_id = "synthetic-prompter"
    version = "synthetic-prompter-v1"

    def __init__(self, compound_share: float = EDIT_WEIGHTS["compound"]) -> None:
        if not 0.0 <= compound_share < 1.0:
            raise ValueError(f"compound_share must be in [0, 1), got {compound_share!r}")
        rest = 1.0 - EDIT_WEIGHTS["compound"]
        self.weights = {
            k: (compound_share if k == "compound" else v * (1.0 - compound_share) / rest)
            for k, v in EDIT_WEIGHTS.items()
        }

    def write(self, requests: list[PromptRequest]) -> list[PromptDraft]:
        """One draft per request, deterministic in (prompt_id, seed, k, style)."""
        return [self._draft(r) for r in requests]

    def _draft(self, req: PromptRequest) -> PromptDraft:
        if req.style is not None and req.style not in STYLES:
            raise ValueError(f"unknown style {req.style!r}; the synthetic world has {STYLES}")
        if req.k < 0:
            raise ValueError(f"k must be >= 0, got {req.k}")
        rng = np.random.default_rng(derive_seed("prompt", req.prompt_id, req.seed))
        scene = draw_scene(rng, req.style)
        text = write_prompt(scene, rng)
        drafts = self.instructions_for(rng, scene, req.k, req.prompt_id)
        return PromptDraft(
            prompt_id=req.prompt_id,
            text=text,
            style=scene.style,
            topic=scene.background,
            instructions=tuple(drafts),
        )

    def instructions_for(
        self, rng: np.random.Generator, scene: SceneSpec, k: int, prompt_id: str
    ) -> list[InstructionDraft]:
        """``k`` distinct instructions valid for ``scene`` (a ValueError if they cannot be)."""
        drafts: list[InstructionDraft] = []
        seen_text: set[str] = set()
        seen_edits: set[tuple[Edit, ...]] = set()
        attempts = 0
        while len(drafts) < k:
            attempts += 1
            if attempts > 200 + 50 * k:
                raise ValueError(
                    f"could not write {k} distinct instructions for prompt {prompt_id!r}"
                )
            instr = self.draw_instruction(rng, scene)
            if instr is None or instr.edits in seen_edits:
                continue
            t = write_instruction(instr, rng)
            if t in seen_text:
                continue
            seen_text.add(t)
            seen_edits.add(instr.edits)
            drafts.append(InstructionDraft(text=t, edit_type=instr.edit_type))
        return drafts

    def draw_instruction(self, rng: np.random.Generator, scene: SceneSpec) -> Instruction | None:
        """A random instruction valid for ``scene`` (None if the drawn type is impossible)."""
        types = list(self.weights)
        etype = types[
            int(
                rng.choice(
                    len(types), p=np.array(list(self.weights.values())) / sum(self.weights.values())
                )
            )
        ]
        if etype != "compound":
            e = draw_edit(rng, scene, etype)
            return Instruction((e,)) if e else None
        first = draw_edit(rng, scene, _simple_type(rng))
        if first is None:
            return None
        after = apply_to_spec(scene, first)
        banned = {first.target, _result(first)}
        second = draw_edit(rng, after, _simple_type(rng), banned=banned)
        if second is None or (second.type == first.type and first.type in ("background", "style")):
            return None
        return Instruction((first, second))


def _simple_type(rng: np.random.Generator) -> str:
    types = [t for t in EDIT_WEIGHTS if t != "compound"]
    w = np.array([EDIT_WEIGHTS[t] for t in types])
    return types[int(rng.choice(len(types), p=w / w.sum()))]


def _result(e: Edit) -> tuple[str, str] | None:
    if e.type == "add" and e.colour and e.kind:
        return (e.colour, e.kind)
    if e.target and e.type == "recolour":
        return (e.colour or e.target[0], e.target[1])
    if e.target and e.type == "replace":
        return (e.colour or e.target[0], e.kind or e.target[1])
    return e.target


def draw_scene(rng: np.random.Generator, style: str | None = None) -> SceneSpec:
    """A random scene: 1–6 objects of distinct colours in distinct cells."""
    n = int(rng.choice(_OBJECT_COUNTS, p=_COUNT_WEIGHTS))
    n = min(n, MAX_OBJECTS)
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    cells = rng.choice(list(CELLS), size=n, replace=False)
    objs = tuple(
        ObjSpec(
            KINDS[int(rng.integers(len(KINDS)))],
            str(colours[i]),
            SIZES[int(rng.integers(3))],
            str(cells[i]),
        )
        for i in range(n)
    )
    st = style or STYLES[int(rng.integers(len(STYLES)))]
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return SceneSpec(st, bg, objs)


def _pick(rng: np.random.Generator, items: list) -> object:  # type: ignore[type-arg]
    return items[int(rng.integers(len(items)))]


def draw_edit(
    rng: np.random.Generator,
    scene: SceneSpec,
    etype: str,
    banned: set[tuple[str, str] | None] | None = None,
) -> Edit | None:
    """A random edit of type ``etype`` consistent with ``scene`` (None if impossible)."""
    banned = banned or set()
    objs = [o for o in scene.objects if (o.colour, o.kind) not in banned]
    free_cells = [c for c in CELLS if c not in {o.cell for o in scene.objects}]
    unused = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
    if etype == "add":
        if not free_cells or not unused or len(scene.objects) >= MAX_OBJECTS:
            return None
        size = str(_pick(rng, list(SIZES))) if rng.random() < 0.7 else None
        cell = str(_pick(rng, free_cells)) if rng.random() < 0.75 else None
        return Edit(
            "add",
            kind=str(_pick(rng, list(KINDS))),
            colour=str(_pick(rng, unused)),
            size=size,
            cell=cell,
        )
    if etype == "background":
        return Edit(
            "background",
            background=str(_pick(rng, [b for b in BACKGROUNDS if b != scene.background])),
        )
    if etype == "style":
        return Edit("style", style=str(_pick(rng, [s for s in STYLES if s != scene.style])))
    if not objs:
        return None
    o: ObjSpec = _pick(rng, objs)  # type: ignore[assignment]
    target = (o.colour, o.kind)
    if etype == "remove":
        return Edit("remove", target=target)
    if etype == "recolour":
        return Edit("recolour", target=target, colour=str(_pick(rng, unused))) if unused else None
    if etype == "replace":
        kind = str(_pick(rng, [k for k in KINDS if k != o.kind]))
        colour = o.colour if rng.random() < 0.4 or not unused else str(_pick(rng, unused))
        size = str(_pick(rng, list(SIZES))) if rng.random() < 0.3 else None
        return Edit("replace", target=target, kind=kind, colour=colour, size=size)
    if etype == "resize":
        if rng.random() < 0.5:
            size = str(_pick(rng, [s for s in SIZES if s != o.size]))
            return Edit("resize", target=target, size=size)
        delta = 1 if o.size == "small" else -1 if o.size == "large" else int(_pick(rng, [-1, 1]))
        e = Edit("resize", target=target, delta=delta)
        return e if resize_target(o.size, e) != o.size else None
    if etype == "move":
        return Edit("move", target=target, cell=str(_pick(rng, free_cells))) if free_cells else None
    raise ValueError(f"unknown edit type {etype!r}")
