"""Typed rows that flow between stages, and their Arrow schemas.

Every table in a run is a list of one of these records. Each row carries its
provenance (model ids, seeds, steps, guidance, prompt/template versions, judge ids), so
a triplet can be traced back to every decision that made it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import pyarrow as pa

R = TypeVar("R", bound="Record")

_SCALARS: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


def _arrow_type(hint: Any) -> tuple[pa.DataType, bool]:
    """Map a field's type hint to (arrow type, nullable)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is tuple:
        inner, _ = _arrow_type(typing.get_args(hint)[0])
        return pa.list_(inner), False
    return _SCALARS[hint], False


@dataclass(frozen=True)
class Record:
    """Base of all rows: ``key`` names the column that identifies a row in its table."""

    key: ClassVar[str] = ""

    @classmethod
    def schema(cls) -> pa.Schema:
        """The Arrow schema of a table of these records."""
        hints = typing.get_type_hints(cls)
        fields = []
        for f in dataclasses.fields(cls):
            arrow_type, nullable = _arrow_type(hints[f.name])
            fields.append(pa.field(f.name, arrow_type, nullable=nullable))
        return pa.schema(fields)

    @classmethod
    def from_row(cls: type[R], row: dict[str, Any]) -> R:
        """Build a record from a table row (lists become tuples, NaN floats become None)."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value = row[f.name]
            if isinstance(value, list):
                value = tuple(value)
            elif hasattr(value, "tolist") and not isinstance(value, str):
                value = tuple(value.tolist())
            elif isinstance(value, float) and math.isnan(value):
                value = None if _arrow_type(hints[f.name])[1] else value
            values[f.name] = value
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The record as a plain dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @property
    def id(self) -> str:
        """The value of this record's key column."""
        return str(getattr(self, self.key))


def to_table(records: list[Record], cls: type[Record]) -> pa.Table:
    """An Arrow table of records, typed by ``cls``'s schema (empty tables keep the schema)."""
    schema = cls.schema()
    columns = {name: [getattr(r, name) for r in records] for name in schema.names}
    columns = {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in columns.items()}
    return pa.table(columns, schema=schema)


def from_table(table: pa.Table, cls: type[R]) -> list[R]:
    """Records from an Arrow table."""
    return [cls.from_row(row) for row in table.to_pylist()]


@dataclass(frozen=True)
class PromptJob(Record):
    """A request for one prompt: its id, seed and (optional, "" = any) style constraint."""

    key: ClassVar[str] = "prompt_id"
    prompt_id: str
    seed: int
    style: str


@dataclass(frozen=True)
class PromptRow(Record):
    """A text-to-image prompt and its k edit instructions (stage 1)."""

    key: ClassVar[str] = "prompt_id"
    prompt_id: str
    seed: int
    text: str
    style: str
    topic: str
    instructions: tuple[str, ...]
    edit_types: tuple[str, ...]
    prompter_id: str
    prompter_version: str


@dataclass(frozen=True)
class SourceRow(Record):
    """One generated source image (stage 2)."""

    key: ClassVar[str] = "source_id"
    source_id: str
    prompt_id: str
    prompt: str
    style: str
    seed: int
    width: int
    height: int
    image: str
    model_id: str
    steps: int
    guidance: float
    seconds: float


@dataclass(frozen=True)
class EditJob(Record):
    """One (source, instruction, seed) job of the edit grid; becomes one candidate."""

    key: ClassVar[str] = "candidate_id"
    candidate_id: str
    source_id: str
    prompt_id: str
    instruction_id: str
    instruction: str
    edit_type: str
    style: str
    source_image: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class CandidateRow(Record):
    """One generated edit (stage 4): the job plus the edited image and its cost."""

    key: ClassVar[str] = "candidate_id"
    candidate_id: str
    source_id: str
    prompt_id: str
    instruction_id: str
    instruction: str
    edit_type: str
    style: str
    source_image: str
    image: str
    width: int
    height: int
    seed: int
    steps: int
    guidance: float
    model_id: str
    seconds: float


@dataclass(frozen=True)
class Verdict(Record):
    """A judge's verdict on one subject (a source or a candidate); kept for every subject.

    ``reason`` is ``"ok"`` for a pass, else why it failed; ``error`` is set when the judge
    itself failed (an error is never a pass). ``details`` is a JSON object of extra figures.
    """

    key: ClassVar[str] = "subject_id"
    subject_id: str
    passed: bool
    reason: str
    adherence: float | None
    aesthetic: float | None
    details: str
    judge_id: str
    prompt_version: str
    error: str | None


@dataclass(frozen=True)
class TripletRow(Record):
    """An accepted (source image, instruction, edited image) triplet with its provenance."""

    key: ClassVar[str] = "triplet_id"
    triplet_id: str
    origin: str
    parents: tuple[str, ...]
    source_image: str
    edited_image: str
    instruction: str
    edit_type: str
    style: str
    width: int
    height: int
    adherence: float
    aesthetic: float
    score: float
    prompt_id: str
    prompt: str
    source_id: str
    candidate_id: str
    t2i_model: str
    t2i_seed: int
    t2i_steps: int
    editor_model: str
    edit_seed: int
    edit_steps: int
    edit_guidance: float
    prompter_version: str
    writer_version: str
    judge_id: str
    judge_prompt_version: str


@dataclass(frozen=True)
class DraftRow(Record):
    """A bootstrapped triplet before judging (stages 8 and 10): an inverse or composed
    instruction written for an image pair, or the reason none was written."""

    key: ClassVar[str] = "triplet_id"
    triplet_id: str
    origin: str
    parents: tuple[str, ...]
    source_image: str
    edited_image: str
    instruction: str
    skip_reason: str | None
    writer_id: str
    writer_version: str


@dataclass(frozen=True)
class ComposeJob(Record):
    """A pair of accepted edits of one source: (Ie1, p', Ie2) is to be written for it."""

    key: ClassVar[str] = "job_id"
    job_id: str
    first: str
    second: str
    first_image: str
    second_image: str
    first_inverse: str
    second_instruction: str
    prompt: str
