"""Typed rows that flow between stages, and their Arrow schemas.

Every table in a run is a list of one of these records. Each row carries its
provenance (model ids, seeds, steps, guidance, prompt/template versions, judge ids), so
a triplet can be traced back to every decision that made it.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Sequence
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
class _Spec:
    """What converting a record class needs, computed once per class."""

    names: tuple[str, ...]
    schema: pa.Schema
    tuples: frozenset[str]  # list columns, held as tuples in records
    nan_to_none: frozenset[str]  # nullable float columns (NaN in a row means None)


@functools.cache
def _spec(cls: type[Record]) -> _Spec:
    """The field names, Arrow schema and conversion flags of a record class (cached)."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        arrow_type, nullable = _arrow_type(hints[f.name])
        fields.append(pa.field(f.name, arrow_type, nullable=nullable))
    schema = pa.schema(fields)
    return _Spec(
        names=tuple(schema.names),
        schema=schema,
        tuples=frozenset(f.name for f in fields if pa.types.is_list(f.type)),
        nan_to_none=frozenset(
            f.name for f in fields if f.nullable and pa.types.is_floating(f.type)
        ),
    )


def _column_values(column: pa.ChunkedArray | pa.Array, name: str, spec: _Spec) -> list[Any]:
    """A column as Python values the record expects (lists as tuples, NaN as None)."""
    values = column.to_pylist()
    if name in spec.tuples:
        return [None if v is None else tuple(v) for v in values]
    if name in spec.nan_to_none:
        return [None if v is None or v != v else v for v in values]
    return values


@dataclass(frozen=True)
class Record:
    """Base of all rows: ``key`` names the column that identifies a row in its table."""

    key: ClassVar[str] = ""

    @classmethod
    def schema(cls) -> pa.Schema:
        """The Arrow schema of a table of these records."""
        return _spec(cls).schema

    def to_row(self) -> dict[str, Any]:
        """The record as a plain dict (tuples become lists)."""
        return {
            name: list(v) if isinstance(v := getattr(self, name), tuple) else v
            for name in _spec(type(self)).names
        }

    @property
    def id(self) -> str:
        """The value of this record's key column."""
        return str(getattr(self, self.key))


def to_table(records: Sequence[Record], cls: type[Record]) -> pa.Table:
    """An Arrow table of records, typed by ``cls``'s schema (empty tables keep the schema).

    Built column by column: one attribute getter per field, one ``pa.array`` per column.
    """
    spec = _spec(cls)
    arrays = [
        pa.array(list(map(operator.attrgetter(f.name), records)), type=f.type) for f in spec.schema
    ]
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def from_table(table: pa.Table | pa.RecordBatch, cls: type[R]) -> list[R]:
    """Records from an Arrow table, converted column-wise (no per-row reflection)."""
    spec = _spec(cls)
    columns = [_column_values(table.column(name), name, spec) for name in spec.names]
    return [cls(*values) for values in zip(*columns, strict=True)] if columns else []


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


@dataclass(frozen=True)
class PhotoJob(Record):
    """One entry of the photo collection to read."""

    key: ClassVar[str] = "photo_id"
    photo_id: str
    index: int
    location: str


@dataclass(frozen=True)
class PhotoRow(Record):
    """A read and captioned photo, or one refused (``passed`` False, ``reason`` why:
    ``image_<loader reason>`` or ``caption_<error kind>``)."""

    key: ClassVar[str] = "photo_id"
    photo_id: str
    index: int
    location: str
    image: str
    width: int
    height: int
    caption: str
    style: str
    topic: str
    captioner_id: str
    captioner_version: str
    passed: bool
    reason: str
