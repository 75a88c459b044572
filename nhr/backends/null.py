"""The null world: backends for every role that answer at once, for engine benchmarks.

It measures the engine (runner, store, tables, whole-table steps), never a model. Images
are a handful of fixed tiny pictures, so the blob store holds a few hundred files however
long the run; every verdict is a deterministic hash of what the judge sees, passing at
the paper's rates (Table 2), so the volumes per prompt follow the paper's funnel:

- gate: 44 % of sources pass (``hash(prompt, source image)``);
- soft pre-filter: 43 % of edits pass;
- low-level check: the real numpy check (``nhr.stages.filters``) passes the 97 % of edits
  the editor draws as one solid changed block, and fails the 3 % it draws as speckle
  (isolated changed pixels: the largest component is far below 0.5 % of the change);
- hard validator: 37 % of the edits that reach it pass; backward and composed triplets
  go through the same hash, at their own rates.

Pre-filter and validator verdicts are correlated within one (source, instruction) pair:
a "good" pair (``GOOD_PAIR_SHARE`` of them) passes both judges often, the others rarely,
so about 31 % of validated edits share their (source, instruction) with another and the
argmax selection keeps about 69 % of them, as in the paper. A judge only sees pixels and
text, so the prompt writer puts the prompt id into every text it writes; images add the
source variant and the editor's drawn variant to the hash.

Use with 32×32 sources (``LONG_SIDE_MIN = LONG_SIDE_MAX = 32``, ``ASPECT_MAX = 1``): the
speckle edit needs more than 200 changed pixels to fail the largest-component rule.
"""

from __future__ import annotations

import hashlib
import weakref
from functools import lru_cache

import numpy as np
from PIL import Image

from nhr.backends.base import (
    Backend,
    InstructionDraft,
    PrefilterAnswer,
    PromptDraft,
    PromptRequest,
    Scores,
    TextAnswer,
    YesNo,
)
from nhr.images import as_rgb

VERSION = "null-v1"
MODEL_ID = "null-world"
SOURCE_VARIANTS = 16  # fixed source pictures a render draws from
BLOCK_VARIANTS = 32  # solid-block edits (pass the low-level check)
SPECKLE_VARIANTS = 4  # speckle edits (fail it)
EDIT_TYPES = ("add", "remove", "color", "replace", "style")

GATE_RATE = 0.44
PREFILTER_RATE = 0.43
LOWLEVEL_RATE = 0.97
VALIDATOR_RATE = 0.37
# inverse and composed triplets: set so that the exported triplets per prompt come near
# Table 2's 11.4 (this engine composes after backward consistency, the paper before)
BACKWARD_RATE = 0.9
COMPOSED_RATE = 0.95
# (source, instruction) pairs the judges favour, and their pass rates inside and outside
GOOD_PAIR_SHARE = 0.1975
PREFILTER_GOOD = 0.9
PREFILTER_BAD = (PREFILTER_RATE - GOOD_PAIR_SHARE * PREFILTER_GOOD) / (1 - GOOD_PAIR_SHARE)
VALIDATOR_GOOD = 0.89  # GOOD_PAIR_SHARE * PREFILTER_GOOD * VALIDATOR_GOOD / PREFILTER_RATE

INVERSE_PREFIX = "null inverse: "
COMPOSED_PREFIX = "null composed: "


def unit(*parts: object) -> float:
    """A number in [0, 1) drawn from ``parts`` (stable across runs and machines)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


# digests of the images seen, by object while it lives: the stages hand the judges and
# the editor the blob store's shared, never-changed images (``BlobStore.view``), so each
# picture is hashed about once, not once per look
_keys: dict[int, str] = {}


def image_key(image: Image.Image) -> str:
    """A short digest of an image's pixels (what a judge can tell images apart by)."""
    key = _keys.get(id(image))
    if key is None:
        key = hashlib.blake2b(as_rgb(image).tobytes(), digest_size=8).hexdigest()
        _keys[id(image)] = key
        weakref.finalize(image, _keys.pop, id(image), None)
    return key


@lru_cache(maxsize=256)
def source_image(variant: int, size: tuple[int, int]) -> Image.Image:
    """Fixed source picture ``variant`` at ``size``: a two-colour gradient, mid-tones only
    (so a changed block always differs by more than the low-level threshold)."""
    w, h = size
    rng = np.random.default_rng(variant)
    a, b = rng.integers(60, 196, size=(2, 3))
    t = (np.arange(w)[None, :] + np.arange(h)[:, None]) / max(1, w + h - 2)
    pixels = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def changed(pixels: np.ndarray, mask: np.ndarray) -> Image.Image:
    """``pixels`` with the masked pixels shifted by 128 in every channel (a change of 128)."""
    out = pixels.copy()
    out[mask] = (out[mask].astype(np.int16) + 128) % 256
    return Image.fromarray(out, "RGB")


def block_edit(image: Image.Image, variant: int) -> Image.Image:
    """One solid rectangle changed: one 4-connected component, so it passes."""
    pixels = np.asarray(as_rgb(image))
    h, w = pixels.shape[:2]
    rng = np.random.default_rng(variant)
    bw, bh = max(1, w // 4), max(1, h // 4)
    x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    mask = np.zeros((h, w), dtype=bool)
    mask[y : y + bh, x : x + bw] = True
    return changed(pixels, mask)


def speckle_edit(image: Image.Image, variant: int) -> Image.Image:
    """Isolated changed pixels on a checkerboard (every component one pixel), so it fails
    the largest-component rule wherever more than 200 pixels change."""
    pixels = np.asarray(as_rgb(image))
    h, w = pixels.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    keep = np.random.default_rng(1000 + variant).random((h, w)) < 0.8
    return changed(pixels, ((xx + yy) % 2 == 0) & keep)


# edited pictures kept by (source pixels, size, variant, speckle): a run draws from
# SOURCE_VARIANTS × (BLOCK_VARIANTS + SPECKLE_VARIANTS) of them, so each is computed once
EDIT_CACHE = 4096
_edits: dict[tuple[str, tuple[int, int], int, bool], Image.Image] = {}


def cached_edit(image: Image.Image, variant: int, speckle: bool) -> Image.Image:
    """``block_edit`` (or ``speckle_edit``) of ``image``, computed once per picture and
    variant; a copy the caller may change. The null world answers at once: what the
    engine benchmark measures is the engine, not the drawing of these pictures."""
    key = (image_key(image), image.size, variant, speckle)
    hit = _edits.get(key)
    if hit is None:
        hit = (speckle_edit if speckle else block_edit)(image, variant)
        if len(_edits) >= EDIT_CACHE:
            _edits.clear()
        _edits[key] = hit
    return hit.copy()


class NullPrompter(Backend):
    """A ``PromptWriter`` whose texts carry the prompt id (judges hash what they read)."""

    model_id = MODEL_ID
    version = VERSION

    def write(self, requests: list[PromptRequest]) -> list[PromptDraft]:
        """One prompt and k instructions per request, at once."""
        return [
            PromptDraft(
                prompt_id=r.prompt_id,
                text=f"null prompt {r.prompt_id}",
                style=r.style or "photo",
                topic="null",
                instructions=tuple(
                    InstructionDraft(
                        f"null edit {j} of {r.prompt_id}", EDIT_TYPES[j % len(EDIT_TYPES)]
                    )
                    for j in range(r.k)
                ),
            )
            for r in requests
        ]


class NullRenderer(Backend):
    """A ``TextToImage`` returning one of ``SOURCE_VARIANTS`` fixed pictures per seed."""

    work = "cpu"  # pure computation: worker processes when WORKERS > 1
    model_id = MODEL_ID
    size_multiple = 8

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sizes: list[tuple[int, int]],
        steps: int,
        guidance: float,
    ) -> list[Image.Image]:
        """The seed's fixed picture at each requested size."""
        return [
            source_image(int(unit("source", s) * SOURCE_VARIANTS), tuple(size))
            for s, size in zip(seeds, sizes, strict=True)
        ]


class NullEditor(Backend):
    """An ``Editor`` drawing, by hash of the job, a solid-block edit (``LOWLEVEL_RATE``)
    or a speckle edit (the rest)."""

    work = "cpu"  # pure computation: worker processes when WORKERS > 1
    model_id = MODEL_ID

    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        steps: list[int],
        guidance: float,
    ) -> list[Image.Image]:
        """Each image with a block (or speckle) changed, at the input's size."""
        out = []
        for image, text, seed in zip(images, instructions, seeds, strict=True):
            u = unit("edit", text, seed)
            if u < LOWLEVEL_RATE:
                out.append(cached_edit(image, int(u / LOWLEVEL_RATE * BLOCK_VARIANTS), False))
            else:
                v = (u - LOWLEVEL_RATE) / (1 - LOWLEVEL_RATE)
                out.append(cached_edit(image, int(v * SPECKLE_VARIANTS), True))
        return out


def seen_edits(
    sources: list[Image.Image], edits: list[Image.Image], instructions: list[str]
) -> list[tuple[str, str, str]]:
    """What a judge sees of each edit: (instruction, source key, edit key)."""
    return [
        (text, image_key(src), image_key(edit))
        for src, edit, text in zip(sources, edits, instructions, strict=True)
    ]


def passing_scores(passed: bool, *parts: object) -> Scores:
    """Validator scores on 1–5 that clear 4.7 on both axes iff ``passed``, varied by hash
    so the argmax selection has a choice to make."""
    a, b = unit("adh", *parts), unit("aes", *parts)
    if passed:
        return Scores(round(4.7 + 0.3 * a, 3), round(4.7 + 0.3 * b, 3))
    return Scores(round(1.0 + 3.6 * a, 3), round(4.0 + b, 3))


class NullJudge(Backend):
    """A ``Judge`` for the gate, the pre-filter and the validator (module note: rates)."""

    work = "cpu"  # pure computation (hashes), no waiting: worker processes when WORKERS > 1
    judge_id = "null-judge"
    prompt_version = VERSION

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]:
        """Yes for ``GATE_RATE`` of (prompt, image) pairs."""
        out = []
        for image, prompt in zip(images, prompts, strict=True):
            ok = unit("gate", prompt, image_key(image)) < GATE_RATE
            out.append(YesNo(ok, "null world: drawn by hash"))
        return out

    def prefilter(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[PrefilterAnswer]:
        """Pass ``PREFILTER_RATE`` of edits (more often in a good pair); a fail names one
        of the three reasons, drawn by hash."""
        out = []
        for text, k_src, k_edit in seen_edits(sources, edits, instructions):
            rate = PREFILTER_GOOD if self._good_pair(text, k_src) else PREFILTER_BAD
            ok = unit("prefilter", text, k_src, k_edit) < rate
            why = 3 if ok else int(unit("prefilter-why", text, k_src, k_edit) * 3)
            score = 4.0 if why != 2 else 2.0
            out.append(
                PrefilterAnswer(
                    Scores(score, score), unwanted_changes=why == 0, aesthetic_ok=why != 1
                )
            )
        return out

    def score(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[Scores]:
        """Scores that pass at the validator's rate for forward edits (``VALIDATOR_GOOD``
        in a good pair, never outside), ``BACKWARD_RATE`` for inverse and
        ``COMPOSED_RATE`` for composed instructions."""
        out = []
        for text, k_src, k_edit in seen_edits(sources, edits, instructions):
            if text.startswith(COMPOSED_PREFIX):
                rate = COMPOSED_RATE
            elif text.startswith(INVERSE_PREFIX):
                rate = BACKWARD_RATE
            else:
                rate = VALIDATOR_GOOD if self._good_pair(text, k_src) else 0.0
            ok = unit("validator", text, k_src, k_edit) < rate
            out.append(passing_scores(ok, text, k_src, k_edit))
        return out

    @staticmethod
    def _good_pair(instruction: str, source_key: str) -> bool:
        """Whether the judges favour this (source, instruction) pair."""
        return unit("pair", instruction, source_key) < GOOD_PAIR_SHARE


class NullInverter(Backend):
    """An ``InstructionWriter`` answering templated text at once."""

    work = "cpu"  # pure computation: worker processes when WORKERS > 1
    model_id = MODEL_ID
    version = VERSION

    def invert(self, instructions: list[str], prompts: list[str]) -> list[TextAnswer]:
        """The inverse of each instruction, by template."""
        return [TextAnswer(f"{INVERSE_PREFIX}{i}") for i in instructions]

    def compose(
        self, first_inverses: list[str], seconds: list[str], prompts: list[str]
    ) -> list[TextAnswer]:
        """The two instructions joined, by template."""
        return [
            TextAnswer(f"{COMPOSED_PREFIX}{a} then {b}")
            for a, b in zip(first_inverses, seconds, strict=True)
        ]


class NullWorld:
    """One backend per role (the judge serves the gate, the pre-filter and the validator)."""

    def __init__(self) -> None:
        self.judge = NullJudge()
        self.roles: dict[str, object] = {
            "prompter": NullPrompter(),
            "t2i": NullRenderer(),
            "gate_judge": self.judge,
            "editor": NullEditor(),
            "prefilter_judge": self.judge,
            "validator": self.judge,
            "inverter": NullInverter(),
        }

    def backend(self, role: str) -> object:
        """The backend of ``role``."""
        return self.roles[role]
