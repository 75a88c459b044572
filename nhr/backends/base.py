"""Protocols every backend implements, the contract every backend keeps with the
engines (``Backend``), and the small answer types judges return.

Stages are written against these protocols only, so a synthetic backend, a diffusers
pipeline or a Gemini client are interchangeable by configuration.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from PIL import Image

CPU, IO, DEVICE = "cpu", "io", "device"
WORK_KINDS = (CPU, IO, DEVICE)


class Backend:
    """What an engine may ask of any backend, with the defaults.

    ``work``: what its calls spend: ``"cpu"`` (pure computation: worker processes),
    ``"io"`` (waiting on remote calls: threads) or ``"device"`` (a resident model: one
    call at a time, in process); None: ``io``. ``max_batch``: most inputs per call
    (None: any number). ``work_buckets``: the sizes it works at (None: any size).
    ``load()`` before the first call; ``close()`` when its stage ends on a worker;
    ``usage()`` its cumulative API counters (calls, tokens, cost); ``share_limits(f)``
    keeps ``f`` of its API concurrency and rate limits (one of several actors)."""

    work: ClassVar[str | None] = None
    max_batch: int | None = None
    work_buckets: tuple[tuple[int, int], ...] | None = None

    def load(self) -> None:
        """Load what the first call needs (a model); nothing by default."""

    def close(self) -> None:
        """Release what it holds (clients, memory); nothing by default."""

    def usage(self) -> dict[str, float]:
        """Cumulative API usage; none by default."""
        return {}

    def share_limits(self, fraction: float) -> None:
        """Keep ``fraction`` of its API limits; nothing to share by default."""


class _Held(Backend):
    """The contract of a backend that does not derive from ``Backend``: each part it
    has (or its API ``client`` has), else the default. The one place that looks."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.client = getattr(obj, "client", None)

    @property
    def max_batch(self) -> int | None:  # type: ignore[override]
        return getattr(self.obj, "max_batch", None)

    @property
    def work_buckets(self) -> tuple[tuple[int, int], ...] | None:  # type: ignore[override]
        return getattr(self.obj, "work_buckets", None)

    def _part(self, name: str) -> Any:
        for holder in (self.obj, self.client):
            part = getattr(holder, name, None)
            if callable(part):
                return part
        return None

    def load(self) -> None:
        load = getattr(self.obj, "load", None)
        if callable(load):
            load()

    def close(self) -> None:
        close = self._part("close")
        if close is not None:
            with contextlib.suppress(Exception):
                close()

    def usage(self) -> dict[str, float]:
        report = getattr(self.obj, "usage", None)
        return dict(report()) if callable(report) else {}

    def share_limits(self, fraction: float) -> None:
        share = self._part("share_limits")
        if share is not None:
            share(fraction)


def contract(obj: Any) -> Backend:
    """``obj`` as a ``Backend`` (itself, or a view giving the defaults it lacks)."""
    return obj if isinstance(obj, Backend) else _Held(obj)


def declared_work(obj: Any) -> str | None:
    """The ``work`` a backend's (or a stage's) class declares, checked; None if none."""
    kind = getattr(type(obj), "work", None)
    if kind is None:
        return None
    if kind not in WORK_KINDS:
        raise ValueError(
            f"{type(obj).__name__}.work is {kind!r}; declare one of {', '.join(WORK_KINDS)}"
        )
    return kind


@dataclass(frozen=True)
class PromptRequest:
    """One request to a prompt writer: a prompt id, a seed, k instructions, a style."""

    prompt_id: str
    seed: int
    k: int
    style: str | None = None


@dataclass(frozen=True)
class InstructionDraft:
    """One edit instruction as written, with its edit type (``add``, ``remove``, ...)."""

    text: str
    edit_type: str


@dataclass(frozen=True)
class PromptDraft:
    """A text-to-image prompt and k edit instructions consistent with it."""

    prompt_id: str
    text: str
    style: str
    topic: str
    instructions: tuple[InstructionDraft, ...]


@dataclass(frozen=True)
class YesNo:
    """A yes/no answer; ``error`` is set when the judge could not answer (never a pass)."""

    answer: bool
    reason: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Scores:
    """Hard-validator scores on 1–5; ``error`` is set when the judge failed (never a pass).

    ``details`` holds what a judge wants kept beside its scores (its raw answer, sub-scores
    on its own scale); ``veto`` is a reason that fails the verdict whatever the scores
    (an ensemble's vote that did not carry)."""

    adherence: float
    aesthetic: float
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    veto: str | None = None


@dataclass(frozen=True)
class PrefilterAnswer:
    """Soft pre-filter: scores, then yes/no on unwanted modifications and on aesthetics."""

    scores: Scores
    unwanted_changes: bool
    aesthetic_ok: bool
    error: str | None = None
    details: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class PromptWriter(Protocol):
    """Writes T2I prompts and k consistent edit instructions per request."""

    model_id: str
    version: str

    def write(self, requests: list[PromptRequest]) -> list[PromptDraft]: ...


@runtime_checkable
class TextToImage(Protocol):
    """Renders one image per (prompt, seed, size); ``sizes`` are (width, height)."""

    model_id: str
    size_multiple: int

    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        sizes: list[tuple[int, int]],
        steps: int,
        guidance: float,
    ) -> list[Image.Image]: ...


@runtime_checkable
class Editor(Protocol):
    """Applies an instruction to an image; returns an image of exactly the input's size.
    The input images may be shared with other readers: never change them in place."""

    model_id: str

    def edit(
        self,
        images: list[Image.Image],
        instructions: list[str],
        seeds: list[int],
        steps: list[int],
        guidance: float,
    ) -> list[Image.Image]: ...


@runtime_checkable
class Judge(Protocol):
    """A VLM-like judge: sees only pixels and text, answers in the validator's schema."""

    judge_id: str
    prompt_version: str

    def plausibility(self, images: list[Image.Image], prompts: list[str]) -> list[YesNo]: ...

    def prefilter(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[PrefilterAnswer]: ...

    def score(
        self,
        sources: list[Image.Image],
        edits: list[Image.Image],
        instructions: list[str],
    ) -> list[Scores]: ...


def check_triplet_lengths(sources: list[Any], edits: list[Any], instructions: list[str]) -> None:
    """A judge's inputs: one edit and one instruction per source, else a ValueError."""
    if not (len(sources) == len(edits) == len(instructions)):
        raise ValueError(
            f"need one edit and instruction per source; got {len(sources)} sources, "
            f"{len(edits)} edits, {len(instructions)} instructions"
        )


@dataclass(frozen=True)
class TextAnswer:
    """A written instruction; ``error`` says why none was written (never used as text)."""

    text: str
    error: str | None = None


@runtime_checkable
class InstructionWriter(Protocol):
    """Writes inverse and composed instructions for bootstrapping (stages 8 and 10).

    ``invert`` rewrites an instruction into the one that turns the edited image back into
    the source, keeping the attributes the T2I prompt gives the source (never using the
    words revert, undo, restore or back). ``compose`` writes one natural instruction that
    takes the first edit's result to the second's, from the first edit's inverse and the
    second instruction.
    """

    model_id: str
    version: str

    def invert(self, instructions: list[str], prompts: list[str]) -> list[TextAnswer]: ...

    def compose(
        self, first_inverses: list[str], seconds: list[str], prompts: list[str]
    ) -> list[TextAnswer]: ...


@runtime_checkable
class ReportsUsage(Protocol):
    """A backend that counts its remote calls: cumulative ``calls``, ``tokens_in``,
    ``tokens_out``, ``cost_usd``, ``cache_hits``, ``errors`` (any subset)."""

    def usage(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Caption:
    """A photo's description; ``error`` says why there is none (never used as text)."""

    text: str
    style: str = ""
    topic: str = ""
    error: str | None = None


@runtime_checkable
class Captioner(Protocol):
    """A VLM that describes photos, in the words a text-to-image prompt would use, so the
    caption can stand where the chain used the T2I prompt (instructions, gate, inversion)."""

    model_id: str
    version: str

    def caption(self, images: list[Image.Image]) -> list[Caption]: ...


@dataclass(frozen=True)
class CaptionRequest:
    """k instructions wanted for one photo, from its caption; ``seed`` varies the draw."""

    prompt_id: str
    seed: int
    k: int
    caption: str


@dataclass(frozen=True)
class InstructionSet:
    """The k instructions written for one caption; ``error`` set when none could be."""

    instructions: tuple[InstructionDraft, ...]
    error: str | None = None


@runtime_checkable
class CaptionInstructionWriter(Protocol):
    """Writes k distinct edit instructions consistent with a photo's caption."""

    model_id: str
    version: str

    def instructions(self, requests: list[CaptionRequest]) -> list[InstructionSet]: ...
